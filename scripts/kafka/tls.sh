#!/usr/bin/env bash
# A certificate authority and the Kafka brokers' certificate, with keytool alone (any JRE has
# it: `make up` runs this on the host, compose in the apache/kafka image).
#
#   scripts/kafka/tls.sh DIR HOST...    e.g. DIR=.state/kafka/tls HOST=127.0.0.1 localhost
#
# DIR receives:
#   ca.crt           the CA's certificate (PEM, public): clients verify the brokers with it
#   broker.p12       the brokers' key and certificate chain (PKCS12), for every HOST (SAN)
#   truststore.p12   ca.crt as a PKCS12 truststore: brokers verify each other with it
#   store.password   the password of both stores
# Everything but ca.crt is 0600. The CA's private key is deleted once it has signed: nothing can
# sign another certificate this CA vouches for. Nothing is redone when DIR already holds the set
# (delete DIR to issue new ones; clients then need the new ca.crt).
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 DIR HOST..." >&2
    exit 2
fi
dir=$1
shift
if [[ -s $dir/ca.crt && -s $dir/broker.p12 && -s $dir/truststore.p12 && -s $dir/store.password ]]; then
    exit 0
fi

umask 077
mkdir -p "$dir"
work=$(mktemp -d "$dir/.issuing.XXXXXX")
trap 'rm -rf "$work"' EXIT

# 32 random characters a keystore and a properties file take without quoting.
password=$(LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32 || true)
if [[ ${#password} -ne 32 ]]; then
    echo "tls.sh: could not read /dev/urandom" >&2
    exit 1
fi
san=""
for host in "$@"; do
    if [[ $host =~ ^[0-9.]+$ || $host == *:* ]]; then
        san+="${san:+,}ip:$host"
    else
        san+="${san:+,}dns:$host"
    fi
done
days=825 # the longest validity TLS clients accept for a server certificate

# keytool reads the password from its environment (-storepass:env), never from its command
# line, where `ps` would show it to every user of the machine. (PKCS12: the keys have the
# stores' password.)
export TLS_STORE_PASSWORD=$password
tool() { # keytool, quiet unless it fails
    local output
    if ! output=$(keytool -noprompt -storetype PKCS12 -storepass:env TLS_STORE_PASSWORD "$@" 2>&1); then
        echo "$output" >&2
        return 1
    fi
}

# The CA: a self-signed certificate that may sign others, and nothing else.
tool -genkeypair -keystore "$work/ca.p12" -alias ca -dname "CN=orders local Kafka CA" \
    -keyalg EC -groupname secp256r1 -validity "$days" \
    -ext bc:c=ca:true,pathlen:0 -ext ku:c=keyCertSign,cRLSign
tool -exportcert -rfc -keystore "$work/ca.p12" -alias ca -file "$work/ca.crt"

# The brokers' key; its certificate, signed by the CA, names every HOST. serverAuth for the
# client listener, clientAuth because brokers and controllers authenticate each other with it
# (mutual TLS on the controller listener).
tool -genkeypair -keystore "$work/broker.p12" -alias broker -dname "CN=orders-kafka-broker" \
    -keyalg EC -groupname secp256r1 -validity "$days"
tool -certreq -keystore "$work/broker.p12" -alias broker -file "$work/broker.csr"
tool -gencert -keystore "$work/ca.p12" -alias ca -infile "$work/broker.csr" \
    -outfile "$work/broker.crt" -rfc -validity "$days" \
    -ext "san=$san" -ext ku:c=digitalSignature -ext eku=serverAuth,clientAuth
tool -importcert -keystore "$work/broker.p12" -alias ca -file "$work/ca.crt"
tool -importcert -keystore "$work/broker.p12" -alias broker -file "$work/broker.crt"
tool -importcert -keystore "$work/truststore.p12" -alias ca -file "$work/ca.crt"

printf '%s' "$password" >"$work/store.password"
chmod 0644 "$work/ca.crt"
mv "$work/broker.p12" "$work/truststore.p12" "$work/store.password" "$dir/"
# Last: its presence says the set is complete.
mv "$work/ca.crt" "$dir/"
echo "tls.sh: issued a CA and a broker certificate for $* in $dir"
