"""Imported by the fork server alone (its preload), never by the service: the fork server, and through it every
retrain it forks, dies with the thread that started it, even when the service is killed with SIGKILL. A fork server
whose service died while it was still importing exits when its imports end (its "alive" pipe is closed)."""

import os

from recommender.processes import die_with_parent_now

die_with_parent_now()
FORK_SERVER_PID = os.getpid()  # what each retrain forked from here checks its parent against

import sklearn.decomposition  # noqa: E402  (the content fit's, which model/content.py imports late)
import sklearn.feature_extraction.text  # noqa: E402, F401

import recommender.training.trainer  # noqa: E402, F401  (the code every retrain runs, imported once)
