"""Admin policy on who may use which model: the model approval board's decisions.

Modules, by job:
- model_access: the statuses (approved, pilot, retired) and the rule that decides, per team and model;
- store: statuses and teams' allow-lists in the gateway database;
- service: ModelPolicy, the per-process copy the request path asks (no I/O) and the audited changes;
- team_policy: what the serving path asks about a caller's team (models, scheduling class and weight);
- errors: the 403 a request for a model the team may not use gets;
- router: the admin API (/admin/models, /admin/teams/{team}/models);  cli: ``ward approvals``.
"""
