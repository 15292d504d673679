-- Run once by the postgres image when it creates its database (docker-entrypoint-initdb.d):
-- the basic-auth app keeps its users and permissions in a database of their own.
CREATE DATABASE mlflow_auth OWNER mlflow;
