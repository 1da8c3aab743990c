#!/usr/bin/env bash
# Writes the committed seed inputs of every fuzz target (crates/fuzz/seeds/<target>/),
# deterministically: run it again after changing an input format and commit the result.
# The formats are described at the top of each fuzz_targets/<target>.rs.
#
#   bash crates/fuzz/seeds/generate.sh
set -euo pipefail
cd "$(dirname "$0")"
app=app_1
b64() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
seed() { # seed TARGET NAME: stdin is the input
    mkdir -p "$1"
    cat > "$1/$2"
}
rm -rf assertion chain_block request_bodies sealed_blob envelope

# assertion: c = claims signed in the harness, j = signed header/payload, else a raw token.
claims() { # at aud iat exp purpose endpoint jti sub kid signer iss [extra]
    local IFS=$'\n'
    printf 'c%s' "$*"
}
jti=0123456789abcdefghij
claims n gk 0 120 recover r $jti user-1 k1 1 $app | seed assertion valid-recover
claims n gk -10 290 enroll e aaaaaaaaaaaaaaaaaaaaaaaa u-7f3a k2 2 $app | seed assertion valid-enroll-k2
claims n gk 0 120 manage mr $jti user-1 k1 1 $app | seed assertion valid-manage
claims n | seed assertion defaults
claims i gk 0 120 recover r $jti user-1 k1 1 $app | seed assertion at-skew-bound
claims j gk 0 120 recover r $jti user-1 k1 1 $app | seed assertion before-skew-bound
claims e gk 0 120 recover r $jti user-1 k1 1 $app | seed assertion before-expiry
claims x gk 0 120 recover r $jti user-1 k1 1 $app | seed assertion at-expiry
claims n gk 30 120 recover r $jti user-1 k1 1 $app | seed assertion iat-at-skew
claims n gk 31 120 recover r $jti user-1 k1 1 $app | seed assertion iat-past-skew
claims n gk 0 300 recover r $jti user-1 k1 1 $app | seed assertion longest-lifetime
claims n gk -400 -100 recover r $jti user-1 k1 1 $app | seed assertion expired
claims n gk 60 120 recover r $jti user-1 k1 1 $app | seed assertion issued-in-future
claims n gk 0 301 recover r $jti user-1 k1 1 $app | seed assertion too-long-lived
claims n other 0 120 recover r $jti user-1 k1 1 $app | seed assertion wrong-audience
claims n gk 0 120 manage r $jti user-1 k1 1 $app | seed assertion wrong-purpose
claims n gk 0 120 recover r short user-1 k1 1 $app | seed assertion short-jti
claims n gk 0 120 recover r $jti 'user 1' k1 1 $app | seed assertion bad-subject
claims n gk 0 120 recover r $jti user-1 k0 0 $app | seed assertion revoked-key
claims n gk 0 120 recover r $jti user-1 k2 1 $app | seed assertion bad-signature
claims n gk 0 120 recover r $jti user-1 k1 1 app_other | seed assertion unknown-app
claims n gk 0 120 recover r $jti user-1 k1 1 $app nbf | seed assertion extra-claim
claims n gk 0 - recover r $jti user-1 k1 1 $app | seed assertion missing-exp
payload='{"iss":"'$app'","sub":"user-1","aud":"gk","iat":1800000000,"exp":1800000120,"jti":"0123456789abcdefghij","purpose":"recover"}'
printf 'j\n%s' "$payload" | seed assertion json-valid
printf 'j{"alg":"EdDSA","kid":"k1"}\n%s' "$payload" | seed assertion json-header
printf 'j{"alg":"HS256","kid":"k1"}\n%s' "$payload" | seed assertion json-hs256
header=$(printf '{"alg":"EdDSA","typ":"JWT","kid":"k1"}' | b64)
body=$(printf '%s' "$payload" | b64)
sig=$(head -c 64 /dev/zero | b64)
printf '%s.%s.%s' "$header" "$body" "$sig" | seed assertion raw-token
printf '%s.%s.' "$(printf '{"alg":"none"}' | b64)" "$body" | seed assertion raw-alg-none

# chain_block: b, then operations of three bytes (kind, author | subject << 4, flags).
printf 'b\x00\x00\x00' | seed chain_block root
printf 'b\x00\x01\x00' | seed chain_block root-k2
printf 'b\x00\x00\x00\x01\x10\x00' | seed chain_block add-device
printf 'b\x00\x00\x00\x01\x10\x80\x01\x21\x00\x02\x12\x00' | seed chain_block add-add-revoke
printf 'b\x00\x00\x00\x01\x10\x00\x01\x21\x00\x02\x12\x00\x01\x31\x00\x02\x23\x00\x01\x43\x00' | seed chain_block longer
printf 'b\x00\x00\x00\x01\x10\x00\x02\x11\x00\x01\x21\x00' | seed chain_block revoked-author
printf 'b\x00\x00\x00\x02\x00\x00' | seed chain_block revoke-virtual
printf 'b\x00\x00\x00\x01\x10\x00\x01\x20\x02' | seed chain_block stale-link
{ # a raw device-added block: version, kind, index, prev hash, ids, keys, sealed key, author, signature
    printf '\x01\x02\x00\x00\x00\x00\x00\x00\x00\x01'
    head -c 32 /dev/zero
    printf '\x00\x05app_1\x00\x06user-1'
    head -c 64 /dev/zero | tr '\0' '\1'
    printf '\x00\x00'
    head -c 96 /dev/zero | tr '\0' '\2'
} | seed chain_block raw-device-added

# request_bodies: a request type (a-k), structural flags, then field values by line (@: a valid binary value).
printf 'a\x00@\n@\n@\n@' | seed request_bodies enroll
printf 'b\x00email\njo@example.org' | seed request_bodies add-email
printf 'b\x00sms\n+33 6 12 34 56 78\nch_1\n123456' | seed request_bodies add-sms-proof
printf 'b\x00totp' | seed request_bodies add-totp
# 16 digits, one more than E.164 allows: once accepted as valid for Germany.
printf 'b\x00sms\n+4921426122639267' | seed request_bodies add-sms-16-digits
printf 'c\x00m_1\nconfirm' | seed request_bodies start-challenge
printf 'd\x00 0123 ' | seed request_bodies answer
printf 'e\x00ch_1\n123456' | seed request_bodies remove-method
printf 'f\x00' | seed request_bodies unlock
printf 'g\x00abcd efgh jkmn pqrs tvwx' | seed request_bodies cancel-with-code
printf 'h\x00m_1' | seed request_bodies start-recovery
printf 'i\x00ch_1\n123456' | seed request_bodies cancel-recovery
printf 'j\x00@\nch_1\n123456' | seed request_bodies replace-virtual-device
printf 'k\x00@' | seed request_bodies append-block
printf 'b\x02email\njo@example.org' | seed request_bodies unknown-field
printf '{"kind":"sms","destination":"+14155550123","proof":{"challenge_id":"ch_1","code":"123456"}}' | seed request_bodies raw-add-method
printf '{"cancel_code":"ABCD-EFGH-JKMN-PQRS-TVWX"}' | seed request_bodies raw-cancel

# sealed_blob: s then app, user, version, byte to flip; else raw bytes.
printf 's%s\nuser-1\n3\n40' "$app" | seed sealed_blob seal-open
printf 'sa\nb\n0\n0' | seed sealed_blob short-ids
{ printf '\x01'; head -c 104 /dev/zero; } | seed sealed_blob raw-min-blob
{ printf 'GKVD\x01\x00\x00\x00\x00\x00\x00\x00\x01\x03app\x04user'; head -c 64 /dev/zero | tr '\0' '\5'; } | seed sealed_blob raw-plaintext

# envelope: e then author, reader, bit to flip, document; else raw bytes (magic, version,
# author, device key, one recipient, nonce, ciphertext, signature).
printf 'eauthor\nreader\n100\na document' | seed envelope seal-open
printf 'eme\nme\n7\n' | seed envelope same-user-empty-document
{
    printf 'GKEV\x01\x00\x06user-1'
    head -c 32 /dev/zero | tr '\0' '\3'
    printf '\x00\x01\x00\x06user-1\x00\x30'
    head -c 48 /dev/zero | tr '\0' '\4'
    head -c 24 /dev/zero
    printf '\x00\x00\x00\x10'
    head -c 16 /dev/zero | tr '\0' '\6'
    head -c 64 /dev/zero
} | seed envelope raw-one-recipient
