"""MLflow "models from code" entry point of the moe-generator pyfunc (see moepipe/registry/pyfunc.py).

MLflow executes this file when it loads the logged model, instead of unpickling an object.
"""

import mlflow.models

from moepipe.registry.pyfunc import AvatarGenerator

mlflow.models.set_model(AvatarGenerator())
