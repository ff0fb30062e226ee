"""The multi-instance mode is real: through the nginx front, one client's consecutive requests,
on one keep-alive connection, reach different Berth instances."""

from __future__ import annotations

import os

import httpx

from tests.front import Front
from tests.helpers import push_image, sha256


def test_one_blob_push_spreads_over_instances(front: Front, repo: str) -> None:
    data = os.urandom(300_000)
    mark = front.mark()
    with httpx.Client(base_url=front.url, timeout=60) as client:
        started = client.post(f"/v2/{repo}/blobs/uploads/")
        patched = client.patch(started.headers.get("Location", ""), content=data,
                               headers={"Content-Type": "application/octet-stream"})
        finished = client.put(patched.headers.get("Location", ""), params={"digest": sha256(data)})
    served = front.served_since(mark)
    assert [request.method for request in served] == ["POST", "PATCH", "PUT"]
    assert len({request.connection for request in served}) == 1, "the client kept one connection"
    assert len({request.upstream for request in served}) >= 2, served
    # The distribution is what this test proves; the push succeeding across instances is issue 8.
    assert (started.status_code, patched.status_code, finished.status_code) == (202, 202, 201), finished.text


def test_small_image_push_and_pull_reach_every_instance(front: Front, repo: str) -> None:
    mark = front.mark()
    with httpx.Client(base_url=front.url, timeout=60) as client:
        digest, body = push_image(client, repo, "v1", layers=2)
        assert client.get(f"/v2/{repo}/manifests/{digest}").content == body
    served = front.served_since(mark)
    assert {request.upstream for request in served} == set(front.backends), served
