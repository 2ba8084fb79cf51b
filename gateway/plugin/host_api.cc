// The function table plugins call (upgate_host_api_t). Each entry recovers the chain from the
// session handle and forwards; every one is noexcept and catches everything, so no C++ exception
// ever unwinds into plugin frames (which may be C without unwind tables).

#include <string>

#include "core/log.h"
#include "plugin/chain.h"
#include "plugin/host.h"

namespace upgate {

namespace {

const upgate_request_t* apiRequest(upgate_session_t* s) noexcept {
  return s != nullptr ? s->chain->apiRequest() : nullptr;
}

const char* apiHeader(upgate_session_t* s, const char* name, size_t index) noexcept {
  return s != nullptr ? s->chain->apiHeader(name, index) : nullptr;
}

size_t apiHeaderCount(upgate_session_t* s) noexcept {
  return s != nullptr ? s->chain->apiHeaderCount() : 0;
}

int apiHeaderAt(upgate_session_t* s, size_t i, const char** name, const char** value) noexcept {
  return s != nullptr ? s->chain->apiHeaderAt(i, name, value) : -1;
}

const char* apiClientAddress(upgate_session_t* s, uint16_t* port) noexcept {
  if (s == nullptr) return nullptr;
  return s->chain->apiClientAddress(port);
}

const upgate_tls_identity_t* apiTlsClient(upgate_session_t* s) noexcept {
  try {
    return s != nullptr ? s->chain->apiTlsClient() : nullptr;
  } catch (...) {
    return nullptr;
  }
}

int apiSetUpstreamHeader(upgate_session_t* s, const char* name, const char* value) noexcept {
  try {
    return s != nullptr ? s->chain->apiSetUpstreamHeader(s->index, name, value) : -1;
  } catch (...) {
    return -1;
  }
}

int apiSetIdentity(upgate_session_t* s, const char* user, const char* claims_json) noexcept {
  try {
    return s != nullptr ? s->chain->apiSetIdentity(s->index, user, claims_json) : -1;
  } catch (...) {
    return -1;
  }
}

const char* apiIdentity(upgate_session_t* s, const char** claims_json) noexcept {
  if (s == nullptr) {
    if (claims_json != nullptr) *claims_json = nullptr;
    return nullptr;
  }
  return s->chain->apiIdentity(claims_json);
}

void apiLog(upgate_session_t* s, upgate_log_level_t level, const char* message) noexcept {
  try {
    if (s != nullptr) {
      s->chain->apiLog(s->index, level, message);
      return;
    }
    const char* msg = message != nullptr ? message : "";
    switch (level) {
      case UPGATE_LOG_DEBUG:
        UPGATE_LOG(debug, 0, "plugin: {}", msg);
        break;
      case UPGATE_LOG_INFO:
        UPGATE_LOG(info, 0, "plugin: {}", msg);
        break;
      case UPGATE_LOG_WARN:
        UPGATE_LOG(warn, 0, "plugin: {}", msg);
        break;
      default:
        UPGATE_LOG(err, 0, "plugin: {}", msg);
        break;
    }
  } catch (...) {
    // A log line is not worth crossing the ABI with an exception.
  }
}

uint64_t apiSessionId(upgate_session_t* s) noexcept {
  return s != nullptr ? s->chain->apiSessionId() : 0;
}

uint32_t apiWorkerIndex(upgate_session_t* s) noexcept {
  return s != nullptr ? s->chain->apiWorkerIndex() : 0;
}

uint64_t apiNowMs(upgate_session_t* s) noexcept {
  return s != nullptr ? s->chain->apiNowMs() : 0;
}

uint64_t apiTimerStart(upgate_session_t* s, uint64_t delay_ms, upgate_timer_cb cb,
                       void* arg) noexcept {
  try {
    return s != nullptr ? s->chain->apiTimerStart(s->index, delay_ms, cb, arg) : 0;
  } catch (...) {
    return 0;
  }
}

void apiTimerCancel(upgate_session_t* s, uint64_t id) noexcept {
  try {
    if (s != nullptr) s->chain->apiTimerCancel(s->index, id);
  } catch (...) {
  }
}

int apiResume(upgate_session_t* s, upgate_decision_t decision, const upgate_reject_t* reject,
              const upgate_route_t* route) noexcept {
  try {
    return s != nullptr ? s->chain->apiResume(s->index, decision, reject, route) : -1;
  } catch (...) {
    return -1;
  }
}

int apiClose(upgate_session_t* s, uint16_t code, const char* reason) noexcept {
  try {
    return s != nullptr ? s->chain->apiClose(s->index, code, reason) : -1;
  } catch (...) {
    return -1;
  }
}

void* apiGetData(upgate_session_t* s) noexcept {
  return s != nullptr ? s->data : nullptr;
}

void apiSetData(upgate_session_t* s, void* data) noexcept {
  if (s != nullptr) s->data = data;
}

uint64_t apiHttpRequest(upgate_session_t* s, const char* method, const char* url,
                        const upgate_header_t* headers, size_t n_headers, const char* body,
                        size_t body_len, uint64_t timeout_ms, upgate_http_cb cb,
                        void* arg) noexcept {
  try {
    return s != nullptr ? s->chain->apiHttpRequest(s->index, method, url, headers, n_headers, body,
                                                   body_len, timeout_ms, cb, arg)
                        : 0;
  } catch (...) {
    return 0;
  }
}

void apiHttpCancel(upgate_session_t* s, uint64_t id) noexcept {
  try {
    if (s != nullptr) s->chain->apiHttpCancel(s->index, id);
  } catch (...) {
  }
}

}  // namespace

void fillHostApi(upgate_host_api_t& t) {
  t.request = apiRequest;
  t.header = apiHeader;
  t.header_count = apiHeaderCount;
  t.header_at = apiHeaderAt;
  t.client_address = apiClientAddress;
  t.tls_client = apiTlsClient;
  t.set_upstream_header = apiSetUpstreamHeader;
  t.set_identity = apiSetIdentity;
  t.identity = apiIdentity;
  t.log = apiLog;
  t.session_id = apiSessionId;
  t.worker_index = apiWorkerIndex;
  t.now_ms = apiNowMs;
  t.timer_start = apiTimerStart;
  t.timer_cancel = apiTimerCancel;
  t.resume = apiResume;
  t.close = apiClose;
  t.get_data = apiGetData;
  t.set_data = apiSetData;
  t.http_request = apiHttpRequest;
  t.http_cancel = apiHttpCancel;
}

}  // namespace upgate
