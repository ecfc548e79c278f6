"""The REST app in-process (ASGI): readiness while draining, no trace ever reaches a client, and a
version that is not ASCII digits is never a 500."""

from __future__ import annotations

import asyncio

import httpx

from services.model_server.repository import Registry
from services.model_server.rest import build_rest_app
from services.model_server.settings import ModelServerSettings
from tests.integration.model_server_helpers import copy_repository


def test_readiness_follows_loading_and_shutdown_and_unexpected_errors_are_generic(tmp_path):
    repo = copy_repository(tmp_path / "repo", {"wine": [1, 2]})
    draining = {"on": False}

    async def scenario():
        reg = Registry(ModelServerSettings(model_repository=repo, poll_interval_s=0, version_policy="latest:1"))
        app = build_rest_app(reg, max_body_bytes=1 << 16, is_shutting_down=lambda: draining["on"])
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/v2/health/ready")).status_code == 503  # nothing loaded yet
            await reg.start()
            try:
                assert (await client.get("/v2/health/ready")).json() == {"ready": True}
                assert (await client.get("/v2/health/live")).status_code == 200
                assert (await client.get("/v2/models/wine/versions/2/ready")).status_code == 200
                assert (await client.get("/v2/models/wine/versions/1/ready")).status_code == 404  # never loaded
                assert (await client.get("/v2/models/nope/ready")).status_code == 404

                servable = reg.resolve("wine")

                async def broken(x):
                    raise RuntimeError("secret internals")

                servable.predict = broken
                body = {"inputs": [{"name": "input", "shape": [1, 13], "datatype": "FP32", "data": [1.0] * 13}]}
                r = await client.post("/v2/models/wine/infer", json=body)
                assert r.status_code == 500 and r.json() == {"error": "internal error; see the server log",
                                                              "code": "internal"}
                assert "secret" not in r.text
                r = await client.post("/v1/models/wine:predict", json={"instances": [[1.0] * 13]})
                assert r.status_code == 500 and "secret" not in r.text and r.json()["code"] == "internal"

                # str.isdigit() takes '²' (and int() then fails): a version is ASCII digits, else a label.
                for path in ("/v2/models/wine/versions/²/ready", "/v2/models/wine/versions/²",
                             "/v2/models/wine/versions/" + "9" * 5000):
                    assert (await client.get(path)).status_code == 404, path
                for path in ("/v2/models/wine/versions/²/infer", "/v1/models/wine/versions/²:predict"):
                    r = await client.post(path, json=body)
                    assert r.status_code == 404 and r.json()["code"] == "not_found", (path, r.text)
                assert (await client.get("/v1/models/wine/versions/²")).status_code == 404

                draining["on"] = True
                assert (await client.get("/v2/health/ready")).status_code == 503
            finally:
                await reg.stop()
            assert (await client.get("/v2/models/wine/versions/2/ready")).status_code == 503  # known, unloaded

    asyncio.run(scenario())
