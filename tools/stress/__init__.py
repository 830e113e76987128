"""``taskengine stress``: many concurrent client actors drive one engine (optionally killed with
SIGKILL and restarted), then every acknowledgement is checked and the replay check is run.

``command`` is the front end (arguments, report printing); ``workload`` the clients and jobs;
``child`` the engine's process when it is crashed; ``driver`` the orchestration; ``check`` the
final check of every acknowledgement; ``report`` the figures. Nothing is imported here, so the
command line can look the tool up without loading the engine.
"""
