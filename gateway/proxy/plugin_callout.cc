#include "proxy/plugin_callout.h"

#include <string_view>
#include <utility>

namespace upgate {

namespace {

class Callout final : public PluginHttpCall {
 public:
  explicit Callout(std::shared_ptr<HttpClient::Call> call) : call_(std::move(call)) {}
  ~Callout() override { cancel(); }
  void cancel() override { HttpClient::cancel(call_); }  // no-op once finished

 private:
  std::shared_ptr<HttpClient::Call> call_;
};

bool startsWith(const std::string& s, std::string_view prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

}  // namespace

upgate_http_result_t calloutResultOf(const std::string& error) {
  if (error.empty()) return UPGATE_HTTP_OK;
  if (startsWith(error, "timeout")) return UPGATE_HTTP_TIMEOUT;
  if (startsWith(error, "resolve:") || startsWith(error, "connect:")) return UPGATE_HTTP_CONNECT;
  return UPGATE_HTTP_ERROR;
}

std::unique_ptr<PluginHttpCall> startPluginCallout(HttpClient& client, PluginHttpRequest request,
                                                   PluginHttpDone done) {
  if (client.isClosed()) return nullptr;
  HttpRequest req;
  req.method = std::move(request.method);
  req.endpoint = std::move(request.endpoint);
  req.target = std::move(request.target);
  req.headers = std::move(request.headers);
  req.body = std::move(request.body);
  req.timeout = request.timeout;
  auto call = client.send(
      std::move(req), [done = std::move(done)](const std::string& error, HttpResponse& response) {
        PluginHttpResult r;
        r.result = calloutResultOf(error);
        r.error = error;
        if (r.result == UPGATE_HTTP_OK) {
          r.status = response.status;
          r.headers = std::move(response.headers);
          r.body = std::move(response.body);
        }
        done(r);
      });
  return std::make_unique<Callout>(std::move(call));
}

}  // namespace upgate
