"""Flower's configuration for rerankq (``celery flower --conf=infra/flower/flowerconfig.py``).

Tornado executes this file; every name below is a Flower option. The broker comes from ``CELERY_BROKER_URL``
(``redis://:PASSWORD@redis:6379/0``), the login from ``FLOWER_BASIC_AUTH`` (``user:password``, several
separated by commas). Flower refuses to start without a login: the dashboard can cancel and inspect jobs.
"""

import os

if not os.environ.get("FLOWER_BASIC_AUTH") and not os.environ.get("FLOWER_AUTH_PROVIDER"):
    raise SystemExit("FLOWER_BASIC_AUTH is not set: give Flower a login (user:password), see docs/DEPLOYMENT.md")

port = int(os.environ.get("FLOWER_PORT", "5555"))
address = "0.0.0.0"
# Workers send task events (jobs appear as tasks: state, runtime, worker); Flower re-enables them every
# few seconds, so a worker started without -E still shows up.
enable_events = True
# Keep task history across Flower restarts.
persistent = True
db = os.environ.get("FLOWER_DB", "/var/lib/flower/flower.db")
state_save_interval = 60_000
max_tasks = 50_000
# Workers that scaled away (KEDA) disappear from the list after 10 minutes.
purge_offline_workers = 600
natural_time = False
tasks_columns = "name,uuid,state,received,started,runtime,worker,retries"
