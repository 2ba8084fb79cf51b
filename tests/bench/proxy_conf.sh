# shellcheck shell=bash
# Sourced by the benchmark scripts that count work per handshake or per message
# (kernel_common.sh, profile_handshakes.sh): the configuration each proxy gets, the same as in
# run.sh: one worker, one listener, passthrough to one echo upstream, logging off.
#
#   upgate_conf  FILE PORT ECHO_ADDR [CERT KEY]         (TLS 1.3 listener when CERT is given)
#   nginx_conf   FILE DIR PORT ECHO_ADDR MASTER [CERT KEY]   (MASTER: on | off; DIR for pid,
#                                                        logs and temp files)
#   haproxy_conf FILE PORT ECHO_ADDR [CERT_AND_KEY_PEM]

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

nginx_conf() {
  local file=$1 dir=$2 port=$3 echo_addr=$4 master=$5 cert=${6:-} key=${7:-} ssl="" tls=""
  [ -n "$cert" ] && ssl=" ssl" tls="    ssl_certificate $cert;
    ssl_certificate_key $key;
    ssl_protocols TLSv1.3;"
  mkdir -p "$dir/tmp"
  cat >"$file" <<EOC
daemon off;
master_process $master;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 9000; }
http {
  access_log off;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  upstream echo { server $echo_addr; }
  server {
    listen 127.0.0.1:$port$ssl backlog=4096;
$tls
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
}

haproxy_conf() {
  local file=$1 port=$2 echo_addr=$3 pem=${4:-} ssl=""
  [ -n "$pem" ] && ssl=" ssl crt $pem ssl-min-ver TLSv1.3"
  cat >"$file" <<EOC
global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
  timeout client-fin 5s
  timeout http-request 10s
frontend fe
  bind 127.0.0.1:$port$ssl
  default_backend be
backend be
  server echo $echo_addr
EOC
}
