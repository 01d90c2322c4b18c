"""renderers/probe_image.py: the deploy check's probe image."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

from renderers.probe_image import CONFIG_TYPE, LAYER_TYPE, MANIFEST_TYPE, probe_image, probe_platforms


def test_probe_image_is_a_valid_single_layer_image() -> None:
    for platform, probe in probe_platforms().items():
        manifest = json.loads(probe.manifest)
        config = json.loads(probe.config)
        assert manifest["mediaType"] == MANIFEST_TYPE
        assert manifest["config"] == {
            "mediaType": CONFIG_TYPE, "size": len(probe.config), "digest": probe.config_digest,
        }
        assert manifest["layers"] == [
            {"mediaType": LAYER_TYPE, "size": len(probe.layer), "digest": probe.layer_digest}
        ]
        assert probe.config_digest == "sha256:" + hashlib.sha256(probe.config).hexdigest()
        raw = gzip.decompress(probe.layer)
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            assert tar.getmembers() == []
        assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(raw).hexdigest()]
        assert platform == "/".join(filter(None, [config["os"], config["architecture"], config.get("variant")]))


def test_probe_image_is_the_same_bytes_every_run() -> None:
    assert probe_image("amd64") == probe_image("amd64")
    assert probe_image("amd64").config_digest != probe_image("arm64").config_digest
