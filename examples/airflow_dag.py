"""An Airflow DAG for a scheduled synthgen build: build (resumable), validate, prune.

Copy into your DAGs folder and set SYNTHGEN, RECIPE and ROOT. Each task is one CLI call:
synthgen's exit status is truthful, so a failed build or expectation fails the task and
Airflow's own alerting (email_on_failure, callbacks) takes over.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator

SYNTHGEN = "/srv/synthgen/.venv/bin/synthgen"
RECIPE = "/srv/synthgen/recipes/corpus.yaml"
ROOT = "/data/corpus"

with DAG(
    dag_id="synthgen_nightly",
    schedule="15 2 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # one build per publish root at a time (synthgen also locks it)
    default_args={"retries": 1, "retry_delay": timedelta(minutes=10), "email_on_failure": True},
) as dag:
    build = BashOperator(
        task_id="build",
        # --resume: a retried task continues the interrupted build instead of starting over
        bash_command=f"{SYNTHGEN} build {RECIPE} --publish {ROOT} --resume --no-progress",
        execution_timeout=timedelta(hours=12),
    )
    validate = BashOperator(task_id="validate", bash_command=f"{SYNTHGEN} validate {ROOT}/latest")
    prune = BashOperator(task_id="prune", bash_command=f"{SYNTHGEN} prune {ROOT} --keep 7")
    build >> validate >> prune
