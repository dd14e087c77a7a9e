"""The admin REST API under ``/admin/v1``: tenants, users, tiers, keys, caps, prices, usage
and records, behind the deployment's admin token (``METERGATE_ADMIN_TOKEN``).

- ``auth``: who may call it (the admin token; gateway keys are refused with 403);
- ``schemas``: the request and response bodies, the single source of the contract;
- ``operations``: the registry that serves each operation and describes it;
- ``service``: what each operation reads and writes (writes through ``shared.admin``,
  which announces the change to every proxy process and audits it);
- ``openapi``: the OpenAPI 3.1 document, generated from the registry and the schemas.

The routes themselves are in ``proxy.routes.admin``.
"""
