#!/bin/sh
# Assembles the container image's root file system in OUT from the three binaries in BIN_DIR:
# the binaries, exactly the shared libraries they load (ldd) and the CA bundle librdkafka
# reads for TLS brokers. Nothing else: no shell, no package manager.
# Used by deploy/Containerfile's build stage and by tests/tests/deploy.rs, which builds the
# image offline from binaries built on the host.
#
# usage: rootfs.sh OUT BIN_DIR
set -eu
out=$1
bin_dir=$2
binaries="shadowtap-agent shadowtap-collector shadowtap-provisioner"

mkdir -p "$out/usr/local/bin" "$out/etc/ssl/certs" "$out/tmp"
chmod 1777 "$out/tmp"
for name in $binaries; do
    install -m 0755 "$bin_dir/$name" "$out/usr/local/bin/$name"
    # "libfoo.so => /lib/.../libfoo.so (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"
    ldd "$bin_dir/$name" | awk '/=> \// { print $3 } /^[ \t]*\// { print $1 }' |
        while read -r lib; do
            mkdir -p "$out$(dirname "$lib")"
            cp -L "$lib" "$out$lib"
        done
done
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$out/etc/ssl/certs/"
fi
# Names for the users the manifests run as (logs and `ps` show names, not bare numbers).
printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n' \
    >"$out/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$out/etc/group"
