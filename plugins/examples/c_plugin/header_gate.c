/*
 * header_gate: an example external plugin in plain C.
 *
 * Admits a handshake only when it carries a header with a given value, tells the upstream that
 * the gate passed, and counts each session's messages in frames mode (per-session state through
 * host->set_data, freed in on_close). Config (flat "key: value" lines of YAML):
 *
 *   plugins:
 *     - name: gate
 *       path: ./header_gate.so
 *       config: { header: X-Gate, value: open-sesame }
 *
 * Build: make   (uses `pkg-config --cflags upgate-plugin`, or the source tree's header)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "upgate/plugin.h"

struct gate {
  const upgate_host_api_t* host;
  char header[64];
  char value[128];
};

struct session_state {
  unsigned long messages;
};

/* Copies the value of `key` from flow ("{ a: b, c: d }") or block ("a: b") YAML, unquoted. */
static int config_value(const char* cfg, const char* key, char* out, size_t outlen) {
  size_t klen = strlen(key);
  const char* p = cfg;
  while ((p = strstr(p, key)) != NULL) {
    const char* v = p + klen;
    int at_key_start = p == cfg || strchr("{, \n\t", p[-1]) != NULL;
    p = v;
    if (!at_key_start || *v != ':') continue;
    v++;
    while (*v == ' ' || *v == '"' || *v == '\'') v++;
    size_t n = strcspn(v, ",}\n\"'");
    while (n > 0 && v[n - 1] == ' ') n--;
    if (n == 0 || n >= outlen) return -1;
    memcpy(out, v, n);
    out[n] = '\0';
    return 0;
  }
  return -1;
}

static void* gate_create(const upgate_host_api_t* host, const char* cfg, size_t len, char* err,
                         size_t errlen) {
  struct gate* g;
  (void)len;
  g = (struct gate*)calloc(1, sizeof *g);
  if (g == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  g->host = host;
  if (config_value(cfg, "header", g->header, sizeof g->header) != 0 ||
      config_value(cfg, "value", g->value, sizeof g->value) != 0) {
    snprintf(err, errlen, "config: header and value are required");
    free(g);
    return NULL;
  }
  return g;
}

static void gate_destroy(void* self) {
  free(self);
}

static upgate_decision_t gate_on_request(void* self, upgate_session_t* s, const upgate_request_t* r,
                                         upgate_reject_t* out) {
  static const upgate_header_t hint = {"X-Gate-Hint", "ask the admin"};
  struct gate* g = (struct gate*)self;
  const char* v = g->host->header(s, g->header, 0);
  (void)r;
  if (v == NULL || strcmp(v, g->value) != 0) {
    out->status = 403;
    out->reason = "gate closed";
    out->headers = &hint;
    out->header_count = 1;
    out->body = "the gate is closed\n";
    out->body_len = strlen(out->body);
    return UPGATE_REJECT;
  }
  g->host->set_upstream_header(s, "X-Gate-Passed", "1");
  g->host->set_upstream_header(s, g->header, NULL); /* the secret stays here */
  g->host->log(s, UPGATE_LOG_DEBUG, "gate open");
  return UPGATE_CONTINUE;
}

static upgate_message_action_t gate_on_message(void* self, upgate_session_t* s,
                                               const upgate_message_t* m,
                                               upgate_message_result_t* out) {
  struct gate* g = (struct gate*)self;
  struct session_state* st = (struct session_state*)g->host->get_data(s);
  (void)m, (void)out;
  if (st == NULL) {
    st = (struct session_state*)calloc(1, sizeof *st);
    if (st == NULL) return UPGATE_MESSAGE_PASS;
    g->host->set_data(s, st);
  }
  st->messages++;
  return UPGATE_MESSAGE_PASS;
}

static void gate_on_close(void* self, upgate_session_t* s, uint16_t ws_code, const char* reason) {
  struct gate* g = (struct gate*)self;
  struct session_state* st = (struct session_state*)g->host->get_data(s);
  (void)ws_code, (void)reason;
  if (st != NULL) {
    char line[64];
    snprintf(line, sizeof line, "%lu messages", st->messages);
    g->host->log(s, UPGATE_LOG_DEBUG, line);
    free(st);
    g->host->set_data(s, NULL);
  }
}

static const upgate_plugin_v1_t gate_plugin = {
    UPGATE_PLUGIN_ABI_VERSION,  /* abi_version */
    sizeof(upgate_plugin_v1_t), /* struct_size */
    "header_gate",              /* name */
    gate_create,
    gate_destroy,
    gate_on_request,
    NULL, /* on_route: not interested */
    gate_on_message,
    gate_on_close,
};

UPGATE_PLUGIN_EXPORT const upgate_plugin_v1_t* UPGATE_PLUGIN_ENTRY(uint32_t host_abi_version) {
  return host_abi_version == UPGATE_PLUGIN_ABI_VERSION ? &gate_plugin : NULL;
}
