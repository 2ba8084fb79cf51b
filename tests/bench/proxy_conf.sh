# shellcheck shell=bash
# Sourced by the benchmark scripts (run.sh, kernel_common.sh, profile_handshakes.sh): the
# configuration each proxy gets, one worker, passthrough to one echo upstream, logging off.
#
#   upgate_conf  FILE PORT ECHO_ADDR [CERT KEY]      (one listener; TLS 1.3 when CERT is given)
#   nginx_conf   FILE DIR ECHO_ADDR MASTER PORT [TLS_PORT CERT KEY]
#                (MASTER: on | off; DIR for pid, logs and temp files; PORT "" = no plain listener)
#   haproxy_conf FILE ECHO_ADDR PORT [TLS_PORT CERT_AND_KEY_PEM]   (PORT "" = no plain frontend)
# TLS listeners are TLS 1.3 only. PROXY_CONNECTIONS (default 9000) sizes nginx's connections and
# HAProxy's maxconn.

upgate_conf() {
  local file=$1 port=$2 echo_addr=$3 cert=${4:-} key=${5:-} tls=""
  [ -n "$cert" ] && tls="    tls:
      certificates: [{ cert: $cert, key: $key }]
      min_version: \"1.3\""
  cat >"$file" <<EOC
workers: 1
drain_timeout: 0
listeners:
  - name: bench
    address: 127.0.0.1:$port
    backlog: 4096
$tls
upstreams:
  echo:
    endpoints: [$echo_addr]
routes:
  - name: echo
    kind: websocket
    upstream: echo
    mode: passthrough
log: { level: warn, access_log: false }
EOC
}

# nginx_main DIR MASTER CONNS: the part every benchmark nginx shares, on stdout: one worker,
# CONNS connections, pid, logs and temp files under DIR, and `http {` opened with access logs off
# (the caller writes the rest of the http block and closes it).
nginx_main() {
  local dir=$1 master=$2 conns=$3
  mkdir -p "$dir/tmp"
  cat <<EOC
daemon off;
master_process $master;
worker_processes 1;
worker_rlimit_nofile $((conns + 100));
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections $conns; }
http {
  access_log off;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
EOC
}

nginx_conf() {
  local file=$1 dir=$2 echo_addr=$3 master=$4 port=$5 tport=${6:-} cert=${7:-} key=${8:-}
  local conns=${PROXY_CONNECTIONS:-9000} listen=""
  [ -n "$port" ] && listen="    listen 127.0.0.1:$port backlog=4096;"
  [ -n "$tport" ] && listen="$listen
    listen 127.0.0.1:$tport ssl backlog=4096;
    ssl_certificate $cert;
    ssl_certificate_key $key;
    ssl_protocols TLSv1.3;"
  {
    nginx_main "$dir" "$master" "$conns"
    cat <<EOC
  upstream echo { server $echo_addr; }
  server {
$listen
    location / {
      proxy_pass http://echo;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_set_header Host \$host;
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
    }
  }
}
EOC
  } >"$file"
}

haproxy_conf() {
  local file=$1 echo_addr=$2 port=$3 tport=${4:-} pem=${5:-} frontends=""
  [ -n "$port" ] && frontends="frontend fe
  bind 127.0.0.1:$port
  default_backend be"
  [ -n "$tport" ] && frontends="$frontends
frontend fe_tls
  bind 127.0.0.1:$tport ssl crt $pem ssl-min-ver TLSv1.3
  default_backend be"
  cat >"$file" <<EOC
global
  nbthread 1
  maxconn ${PROXY_CONNECTIONS:-9000}
defaults
  mode http
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
  timeout client-fin 5s
  timeout http-request 10s
$frontends
backend be
  server echo $echo_addr
EOC
}
