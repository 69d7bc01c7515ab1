"""MLflow models-from-code entry point of every registered version, whatever its family.

``hitmusic train`` logs the model with this file as its code and the bundle (weights + JSON or arrays, and
``bundle.json``) as artifacts, so a registered version holds no pickle. MLflow runs this file when someone
calls ``mlflow.pyfunc.load_model`` on the version (the MLflow UI's "use this model" snippet); the project's
own Serve replicas and scoring workers never do: they read the bundle as data
(:func:`hitmodels.registry.load_model`), so what a registry user uploaded is never executed by them.
"""

import mlflow

from hitmodels.bundle import RegisteredModel

mlflow.models.set_model(RegisteredModel())
