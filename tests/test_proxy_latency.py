"""The counting proxy's "latency" mode (benchmarks: a far region) forwards every request unchanged."""

from __future__ import annotations

from s3server import BytesCountingProxy, MotoServer, sync_s3_client


def test_latency_mode_forwards_and_counts_every_request(s3_server: MotoServer, s3_bucket: str) -> None:
    with BytesCountingProxy(s3_server.endpoint_url, mode="latency", latency_s=0.02) as proxy:
        client = sync_s3_client(proxy.endpoint_url)
        client.put_object(Bucket=s3_bucket, Key="a/b.jsonl", Body=b'{"x":1}\n' * 1000)
        body = client.get_object(Bucket=s3_bucket, Key="a/b.jsonl")["Body"].read()
        methods = [r.method for r in proxy.request_log]
    assert body == b'{"x":1}\n' * 1000
    assert methods == ["PUT", "GET"]
    assert proxy.request_log[0].body_bytes == 8000
