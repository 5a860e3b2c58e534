"""The API process never imports torch (nor the worker's task modules): checked in a fresh interpreter
that builds the app and serves real requests, through to enqueueing generation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import json, os, sys
from fastapi.testclient import TestClient
from service.app import create_app

client = TestClient(create_app(), raise_server_exceptions=False)
r = {"Authorization": "Bearer " + os.environ["XS_RESEARCHER_KEY"]}
a = {"Authorization": "Bearer " + os.environ["XS_ADMIN_KEY"]}
codes = [client.get(p, headers=r).status_code for p in ("/v1/health", "/v1/conditions", "/v1/models", "/v1/datasets")]
ds = client.post("/v1/datasets", headers=r, json={"conditions": {"Mass": 2}, "purpose": "checking the API stays torch-free"})
codes.append(ds.status_code)
vote = client.post(f"/v1/datasets/{ds.json()['id']}/reviews", headers=a, json={"decision": "approve", "reason": "ok"})
codes += [vote.status_code, client.get("/v1/audit", headers=a).status_code, client.get("/openapi.json").status_code]
heavy = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")
               or (m.startswith("workers.") and m != "workers.config"))
print(json.dumps({"codes": codes, "enqueued": vote.json().get("enqueued"), "heavy": heavy}))
"""


def test_api_process_never_imports_torch(infra, researcher, admin, model):
    env = {**os.environ, **infra.env, "XS_RESEARCHER_KEY": researcher.key, "XS_ADMIN_KEY": admin.key}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["codes"] == [200, 200, 200, 200, 202, 200, 200, 200]
    assert result["enqueued"] is True
    assert result["heavy"] == []
