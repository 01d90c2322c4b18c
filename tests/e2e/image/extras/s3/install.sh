#!/bin/bash
# The S3 server of the test host, installed on demand into a running host (testhost.ensure_extras):
# runs as root after /usr/local/bin/weed and rootfs/ have been unpacked at /. The unit is not
# enabled (tests start it); a running one is restarted on the new files.
set -euo pipefail

chmod 0755 /usr/local/bin/weed
chmod 0644 /etc/systemd/system/regtest-s3.service
# its credentials are root-only
chmod 0700 /etc/regtest-s3
chmod 0600 /etc/regtest-s3/s3.json
/usr/local/bin/weed version | head -n 1

systemctl daemon-reload
systemctl try-restart regtest-s3.service
