#!/bin/bash
# A Kubernetes API and Flux's controllers on the test host, installed on demand into a running host
# (testhost.ensure_extras(flux=True)): runs as root after the binaries (/usr/local/bin), the Flux CRDs
# (/usr/local/share/regtest-kube/crds) and rootfs/ have been unpacked at /. Files sit where k3s keeps its own:
# certificates under /var/lib/rancher/k3s/server/tls, the admin kubeconfig at /etc/rancher/k3s/k3s.yaml (0600),
# the datastore (kine on SQLite) in /var/lib/rancher/k3s/server/db. Idempotent: certificates are made once.
set -euo pipefail

TLS=/var/lib/rancher/k3s/server/tls
KUBECONFIG=/etc/rancher/k3s/k3s.yaml
export KUBECONFIG

chmod 0755 /usr/local/bin/kine /usr/local/bin/kube-apiserver /usr/local/bin/kube-controller-manager \
  /usr/local/bin/kubectl /usr/local/bin/image-reflector-controller /usr/local/bin/notification-controller
chmod 0644 /etc/systemd/system/kine.service /etc/systemd/system/kube-apiserver.service \
  /etc/systemd/system/kube-controller-manager.service /etc/systemd/system/image-reflector-controller.service \
  /etc/systemd/system/notification-controller.service
install -d -m 0700 "$TLS" /var/lib/rancher/k3s/server/db /etc/regtest-kube
install -d -m 0755 /etc/rancher/k3s /var/lib/regtest-kube

# --- certificates: one CA for serving and clients, the API's serving cert, the admin client, the SA key ---
cd "$TLS"
if [ ! -s ca.crt ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 -subj "/CN=k3s-server-ca@regtest" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout ca.key -out ca.crt 2>/dev/null
fi
if [ ! -s serving-kube-apiserver.crt ]; then
  openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=kube-apiserver" \
    -keyout serving-kube-apiserver.key -out serving.csr 2>/dev/null
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" \
    "subjectAltName=IP:127.0.0.1,IP:::1,IP:10.43.0.1,DNS:localhost,DNS:$(hostname),DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
    >serving.ext
  openssl x509 -req -in serving.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -sha256 \
    -extfile serving.ext -out serving-kube-apiserver.crt 2>/dev/null
  rm -f serving.csr serving.ext
fi
if [ ! -s client-admin.crt ]; then
  openssl req -newkey rsa:2048 -nodes -sha256 -subj "/O=system:masters/CN=system:admin" \
    -keyout client-admin.key -out admin.csr 2>/dev/null
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=clientAuth" >admin.ext
  openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -sha256 \
    -extfile admin.ext -out client-admin.crt 2>/dev/null
  rm -f admin.csr admin.ext
fi
if [ ! -s service.key ]; then
  openssl genrsa -out service.key 2048 2>/dev/null
  openssl rsa -in service.key -pubout -out service.pub 2>/dev/null
fi
chmod 0600 ./*.key
rm -f ca.srl

# --- the admin kubeconfig, as k3s writes it (server on loopback, everything embedded) ---
b64() { base64 -w0 <"$1"; }
umask 077
cat >"$KUBECONFIG.new" <<EOF
apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: $(b64 ca.crt)
    server: https://127.0.0.1:6443
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
preferences: {}
users:
- name: default
  user:
    client-certificate-data: $(b64 client-admin.crt)
    client-key-data: $(b64 client-admin.key)
EOF
mv "$KUBECONFIG.new" "$KUBECONFIG"
umask 022
address=$(ip -o -4 route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") {print $(i + 1); exit}}')
printf 'TLS=%s\nADVERTISE_ADDRESS=%s\n' "$TLS" "${address:-127.0.0.1}" >/etc/regtest-kube/apiserver.env

# --- start the API, then the CRDs and flux-system, then the controllers ---
systemctl daemon-reload
systemctl enable -q kine.service kube-apiserver.service kube-controller-manager.service \
  image-reflector-controller.service notification-controller.service
systemctl restart kine.service kube-apiserver.service
for _ in $(seq 1 180); do
  if kubectl get --raw /readyz >/dev/null 2>&1; then break; fi
  sleep 1
done
kubectl get --raw /readyz >/dev/null
systemctl restart kube-controller-manager.service
kubectl apply --server-side --force-conflicts -f /usr/local/share/regtest-kube/crds/ >/dev/null
kubectl wait --for condition=established --timeout=120s -f /usr/local/share/regtest-kube/crds/ >/dev/null
kubectl create namespace flux-system --dry-run=client -o yaml | kubectl apply -f - >/dev/null
systemctl restart image-reflector-controller.service notification-controller.service
kubectl version
