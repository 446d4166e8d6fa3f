"""Run a `uv pip` command with the package sources and constraints pip is configured with.

    python tools/with_pip_sources.py uv pip install --python .venv/bin/python -c constraints.txt -e '.[dev]'

`make setup` installs with uv, which reads neither pip.conf nor PIP_* variables: left alone it
would ask PyPI only and, for torch==2.13.0, fetch the CUDA build with gigabytes of nvidia wheels
instead of the CPU wheel that a machine's find-links carry. pip's own option parser reads the
config files, PIP_* variables and their precedence exactly as `pip install` does; its index URL,
extra index URLs, find-links, --no-index, constraints, trusted hosts, CA bundle, proxy and timeout
become uv options and variables. Index strategy unsafe-best-match is pip's rule (every index
and find-links location together, the best matching version wins); uv's default, the first
index that has the package, would find only torch 2.14.1 on a local extra index and fail.
Run it with the virtual environment's python, whose pip reads that environment's pip.conf too.
"""

from __future__ import annotations

import os
import sys


def uv_options() -> tuple[list[str], dict[str, str]]:
    """(uv command-line options, environment variables) equivalent to pip's install settings."""
    from pip._internal.commands import create_command

    pip, _ = create_command("install").parse_args([])
    options = ["--index-strategy", "unsafe-best-match"]
    if pip.no_index:
        options.append("--no-index")
    else:
        options += ["--index-url", pip.index_url]
        for url in pip.extra_index_urls:
            options += ["--extra-index-url", url]
    for location in pip.find_links:
        options += ["--find-links", location]
    for path in pip.constraints:
        options += ["--constraint", path]
    for host in pip.trusted_hosts:
        options += ["--allow-insecure-host", host]
    env = {}
    if pip.cert:
        env["SSL_CERT_FILE"] = pip.cert
    if pip.proxy:
        env["HTTPS_PROXY"] = env["HTTP_PROXY"] = pip.proxy
    if pip.timeout:
        env["UV_HTTP_TIMEOUT"] = str(int(pip.timeout))
    return options, env


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    options, env = uv_options()
    command = [*sys.argv[1:], *options]
    print("+", " ".join(command), flush=True)
    # Variables already set win over pip's values (uv reads them, as pip reads PIP_*).
    os.execvpe(command[0], command, {**env, **os.environ})


if __name__ == "__main__":
    main()
