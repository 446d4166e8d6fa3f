-- Runs once, when the Postgres volume is first initialised: MLflow uses the database `mlflow`
-- (POSTGRES_DB), Prefect its own database `prefect` (with pg_trgm, which Prefect requires).
CREATE DATABASE prefect OWNER moepipe;
\connect prefect
CREATE EXTENSION IF NOT EXISTS pg_trgm;
