sudo -n sh -c 'set -eu
REGISTRY=registry.example.com
BASE="https://$REGISTRY"
PROBE=ops/verify-probe
TAG=v1
MANIFEST_TYPE=application/vnd.docker.distribution.manifest.v2+json
DEADLINE=180
K3S=yes
ALLOWLIST=yes
LAYER=H4sIAAAAAAACA+3BAQ0AAADCoPdPbQ43oAAAAAAAAAAAAIA3A5reHScAKAAA
LAYER_DIGEST=sha256:b1dd88cdd8bf09af2539d0b345e647129d8fd55c92b6d824b6ecc53efd531028
curl_tls() { curl "$@"; }
probe_files() {  # probe_files DIR: the config and manifest for this machine'"'"'s platform; sets config_digest
  case "$(uname -m)" in
    x86_64|amd64)
      printf '"'"'%s'"'"' '"'"'{"architecture":"amd64","config":{"Labels":{"org.opencontainers.image.description":"registry deploy check probe"}},"os":"linux","rootfs":{"diff_ids":["sha256:84ff92691f909a05b224e1c56abb4864f01b4f8e3c854e4bb4c7baf1d3f6d652"],"type":"layers"}}'"'"' >"$1/config"
      printf '"'"'%s'"'"' '"'"'{"config":{"digest":"sha256:92d7f083b2829d56e76a60f381e656f4714f7dfbee9747eb0d4c1c1aa51b65ca","mediaType":"application/vnd.docker.container.image.v1+json","size":242},"layers":[{"digest":"sha256:b1dd88cdd8bf09af2539d0b345e647129d8fd55c92b6d824b6ecc53efd531028","mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":45}],"mediaType":"application/vnd.docker.distribution.manifest.v2+json","schemaVersion":2}'"'"' >"$1/manifest"
      config_digest=sha256:92d7f083b2829d56e76a60f381e656f4714f7dfbee9747eb0d4c1c1aa51b65ca ;;
    aarch64|arm64)
      printf '"'"'%s'"'"' '"'"'{"architecture":"arm64","config":{"Labels":{"org.opencontainers.image.description":"registry deploy check probe"}},"os":"linux","rootfs":{"diff_ids":["sha256:84ff92691f909a05b224e1c56abb4864f01b4f8e3c854e4bb4c7baf1d3f6d652"],"type":"layers"}}'"'"' >"$1/config"
      printf '"'"'%s'"'"' '"'"'{"config":{"digest":"sha256:9e044bc8023fdb72613c429d43694087dc6ca908df6e732d1a28aa7f39726521","mediaType":"application/vnd.docker.container.image.v1+json","size":242},"layers":[{"digest":"sha256:b1dd88cdd8bf09af2539d0b345e647129d8fd55c92b6d824b6ecc53efd531028","mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":45}],"mediaType":"application/vnd.docker.distribution.manifest.v2+json","schemaVersion":2}'"'"' >"$1/manifest"
      config_digest=sha256:9e044bc8023fdb72613c429d43694087dc6ca908df6e732d1a28aa7f39726521 ;;
    armv7*|armv8l)
      printf '"'"'%s'"'"' '"'"'{"architecture":"arm","config":{"Labels":{"org.opencontainers.image.description":"registry deploy check probe"}},"os":"linux","rootfs":{"diff_ids":["sha256:84ff92691f909a05b224e1c56abb4864f01b4f8e3c854e4bb4c7baf1d3f6d652"],"type":"layers"},"variant":"v7"}'"'"' >"$1/config"
      printf '"'"'%s'"'"' '"'"'{"config":{"digest":"sha256:caa7af32ed395368bb174fd4c0438f48cb63fcda7f8a950345434176812c1b3b","mediaType":"application/vnd.docker.container.image.v1+json","size":255},"layers":[{"digest":"sha256:b1dd88cdd8bf09af2539d0b345e647129d8fd55c92b6d824b6ecc53efd531028","mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":45}],"mediaType":"application/vnd.docker.distribution.manifest.v2+json","schemaVersion":2}'"'"' >"$1/manifest"
      config_digest=sha256:caa7af32ed395368bb174fd4c0438f48cb63fcda7f8a950345434176812c1b3b ;;
    *) return 1 ;;
  esac
}
<host/steps/verify/check.sh sha256=1b431f0708e60e5ce861c69bb5b9842b2b4ce9254fc060ca7cfac998bc1f79e6 quoted>'