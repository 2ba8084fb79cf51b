#include "tls/tls_error.h"

#include <openssl/err.h>

namespace upgate {

std::string takeTlsErrors() {
  std::string out;
  const char* data = nullptr;
  int flags = 0;
  while (unsigned long e = ERR_get_error_all(nullptr, nullptr, nullptr, &data, &flags)) {
    if (!out.empty()) out += "; ";
    const char* reason = ERR_reason_error_string(e);
    out += reason ? reason : "error " + std::to_string(ERR_GET_REASON(e));
    if ((flags & ERR_TXT_STRING) && data && *data) {
      out += " (";
      out += data;
      out += ')';
    }
  }
  return out;
}

}  // namespace upgate
