#include "bridge/poller.h"

#include <nlohmann/json.hpp>
#include <optional>
#include <random>

#include "bridge/hub.h"
#include "config/validate.h"
#include "core/handle.h"
#include "core/log.h"
#include "http/headers.h"
#include "http/template.h"
#include "proxy/worker.h"
#include "websocket/utf8.h"

namespace upgate {
namespace {

// "$.a.b" -> the value at that path of a JSON object, as text (strings unquoted).
bool jsonPath(const nlohmann::json& doc, std::string_view path, std::string& out) {
  if (path.substr(0, 2) == "$.") path.remove_prefix(2);
  const nlohmann::json* node = &doc;
  while (!path.empty()) {
    size_t dot = path.find('.');
    std::string key(path.substr(0, dot));
    if (!node->is_object() || !node->contains(key)) return false;
    node = &(*node)[key];
    path = dot == std::string_view::npos ? std::string_view() : path.substr(dot + 1);
  }
  out = node->is_string() ? node->get<std::string>() : node->dump();
  return true;
}

}  // namespace

bool isBinaryAnswer(const HttpResponse& r) {
  const std::string* type = findHeader(r.headers, "content-type");
  if (type && type->find("application/octet-stream") != std::string::npos) return true;
  return !isValidUtf8(r.body);
}

PollRequest makePollRequest(const LongPollConfig& lp, std::shared_ptr<const RequestHead> origin) {
  PollRequest poll;
  poll.target = expandTemplate(lp.poll, *origin, TemplateUse::UrlTarget).value_or("");
  for (const std::string& name : lp.poll_forward_headers) {
    if (const std::string* v = findHeader(origin->headers, name))
      poll.headers.emplace_back(name, *v);
  }
  poll.origin = std::move(origin);
  return poll;
}

Poller::Poller(Worker& worker, std::string channel, GenerationPtr generation,
               const RouteConfig& route, PollRequest poll)
    : worker_(worker),
      channel_(std::move(channel)),
      generation_(std::move(generation)),
      route_(&route),
      poll_(std::move(poll)),
      cursor_(route.longpoll.cursor_initial) {
  uv_timer_init(worker_.loop(), &retry_timer_);
  uv_timer_init(worker_.loop(), &grace_timer_);
  retry_timer_.data = grace_timer_.data = this;
  open_timers_ = 2;
}

Poller::~Poller() = default;

void Poller::start() {
  UPGATE_LOG(info, 0, "channel {}: first subscriber, polling upstream {} {}",
             channelForLog(channel_), route_->upstream, substituteCursor(poll_.target, cursor_));
  poll();
}

void Poller::keep() {
  uv_timer_stop(&grace_timer_);
}

void Poller::releaseAfterGrace() {
  uv_timer_start(&grace_timer_, onGraceTimer, static_cast<uint64_t>(route_->longpoll.grace.count()),
                 0);
}

void Poller::onGraceTimer(uv_timer_t* t) noexcept {
  auto* self = ownerOf<Poller>(t);
  UPGATE_LOG(info, 0, "channel {}: no subscribers for {} ms, polling stopped after {} polls",
             channelForLog(self->channel_), self->route_->longpoll.grace.count(), self->polls_);
  self->worker_.forgetPoller(self->channel_);  // calls destroy()
}

void Poller::destroy() {
  if (stopping_) return;
  stopping_ = true;
  if (call_) HttpClient::cancel(call_);
  call_.reset();
  uv_close(asHandle(&retry_timer_), onClosed);
  uv_close(asHandle(&grace_timer_), onClosed);
}

void Poller::follow(const GenerationPtr& generation) {
  // Forward only: a subscriber's task may carry an older generation than its owner worker's.
  if (stopping_ || !poll_.origin || generation->number <= generation_->number) return;
  // The route of the same name: a long-poll channel belongs to its route (hubChannelKey), so a
  // renamed route's subscribers start channels of their own, and this one stays as it is.
  const RouteConfig* next = nullptr;
  for (const RouteConfig& r : generation->config->routes) {
    if (r.name == route_->name) {
      next = &r;
      break;
    }
  }
  std::optional<std::string> key;
  if (next && next->kind == RouteKind::LongPoll)
    key = expandTemplate(next->longpoll.channel, *poll_.origin, TemplateUse::ChannelKey);
  if (!key || hubChannelKey(*next, *key) != channel_) {
    UPGATE_LOG(info, 0,
               "channel {}: the new configuration has no long-poll route {} keying this "
               "request to this channel; polling goes on as before until its subscribers leave",
               channelForLog(channel_), route_->name);
    return;
  }
  std::string before = signature();
  generation_ = generation;
  route_ = next;
  poll_ = makePollRequest(next->longpoll, poll_.origin);
  if (signature() == before) return;  // the next poll picks up the rest
  UPGATE_LOG(info, 0, "channel {}: configuration generation {}: now polling upstream {} {}",
             channelForLog(channel_), generation_->number, route_->upstream,
             substituteCursor(poll_.target, cursor_));
  if (!call_ && !uv_is_active(asHandle(&retry_timer_))) return;
  if (call_) HttpClient::cancel(call_);  // its callback never runs
  call_.reset();
  uv_timer_stop(&retry_timer_);
  failures_ = 0;
  poll();
}

std::string Poller::signature() const {
  const LongPollConfig& lp = route_->longpoll;
  std::string s = route_->upstream + '\n' + lp.method + ' ' + poll_.target + '\n';
  auto up = generation_->config->upstreams.find(route_->upstream);  // there: validated
  if (up != generation_->config->upstreams.end()) {
    for (const HostPort& e : up->second.endpoints) s += e.text() + ' ';
    if (const auto& tls = up->second.tls) {
      s += "tls " + tls->server_name + ' ' + tls->ca + ' ' + (tls->verify ? "verify " : "") +
           tls->cert + ' ' + tls->key;
    } else {
      s += "plain";
    }
  }
  s += '\n' + std::to_string(lp.timeout.count()) + ' ' + std::to_string(lp.max_response_bytes);
  for (const auto& [name, value] : lp.headers) s += '\n' + name + ": " + value;
  for (const auto& [name, value] : poll_.headers) s += '\n' + name + ": " + value;
  return s;
}

void Poller::onClosed(uv_handle_t* h) noexcept {
  auto* self = ownerOf<Poller>(h);
  if (--self->open_timers_ == 0) delete self;
}

void Poller::poll() {
  if (stopping_) return;
  const Config& cfg = *generation_->config;
  auto it = cfg.upstreams.find(route_->upstream);
  const UpstreamConfig& up = it->second;
  HttpRequest req;
  req.method = route_->longpoll.method;
  req.endpoint = up.endpoints[worker_.nextEndpoint(up)];
  req.tls = generation_->upstreamTls(up.name);
  if (up.tls && !up.tls->server_name.empty()) req.tls_server_name = up.tls->server_name;
  req.target = substituteCursor(poll_.target, cursor_);
  for (const auto& [name, value] : route_->longpoll.headers) req.headers.push_back({name, value});
  for (const auto& [name, value] : poll_.headers) req.headers.push_back({name, value});
  req.timeout = route_->longpoll.timeout;
  req.max_response_bytes = route_->longpoll.max_response_bytes;
  ++polls_;
  call_ =
      worker_.httpClient().send(std::move(req), [this](const std::string& error, HttpResponse& r) {
        call_.reset();
        onResponse(error, r);
      });
}

void Poller::count(const char* result) {
  worker_.metrics()
      .get(metrics::Family::LongPolls,
           metrics::labels({{"route", route_->name}, {"result", result}}))
      .add();
}

void Poller::onResponse(const std::string& error, HttpResponse& r) {
  if (stopping_) return;
  if (!error.empty()) {
    // Our own timeout is the normal end of an idle long-poll: ask again at once.
    if (error.rfind("timeout", 0) == 0) {
      count("empty");
      failures_ = 0;
      poll();
      return;
    }
    // HttpCallback's "response body exceeds N bytes": the answer is over our limit. Polled
    // again with the same cursor it would come back as large, so this is not a passing error:
    // said as one, with what to change, and retried only after the backoff.
    if (error.rfind("response body exceeds", 0) == 0) {
      count("too_large");
      uint64_t delay = retryLater();
      UPGATE_LOG(err, 0,
                 "channel {}: the poll answer is larger than longpoll.max_response_bytes ({}) of "
                 "route {} and was not taken; retry {} in {} ms, cursor \"{}\" kept (raise the "
                 "limit, or have the app answer in smaller batches)",
                 channelForLog(channel_), formatSize(route_->longpoll.max_response_bytes),
                 route_->name, failures_, delay, cursor_);
      return;
    }
    count("error");
    backoff(error);
    return;
  }
  if (r.status == 204 || r.status == 304 || (r.status == 200 && r.body.empty())) {
    count("empty");
    failures_ = 0;
    advanceCursor(r);
    poll();
    return;
  }
  if (r.status != 200) {
    count("error");
    backoff("upstream answered " + std::to_string(r.status));
    return;
  }
  count("data");
  publishBody(r);
  if (advanceCursor(r)) {
    failures_ = 0;
    poll();
    return;
  }
  // The next poll repeats the cursor, so it may well get the same answer again: at once, that
  // would be a loop republishing it as fast as the app answers. Backed off as an error is.
  uint64_t delay = retryLater();
  UPGATE_LOG(warn, 0,
             "channel {}: the poll answer carried no cursor ({}); retry {} in {} ms repeats "
             "cursor \"{}\"",
             channelForLog(channel_),
             route_->longpoll.cursor_header.empty() ? route_->longpoll.cursor_json
                                                    : "header " + route_->longpoll.cursor_header,
             failures_, delay, cursor_);
}

void Poller::publishBody(const HttpResponse& r) {
  Hub& hub = worker_.hub();
  if (!route_->longpoll.split_json_array) {
    hub.publish(channel_, r.body, isBinaryAnswer(r));
    return;
  }
  nlohmann::json doc = nlohmann::json::parse(r.body, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_array()) {
    UPGATE_LOG(warn, 0,
               "channel {}: split: json_array, but the body is not a JSON array; "
               "published whole",
               channelForLog(channel_));
    // Not JSON, so possibly not UTF-8 either: the same rule as split: body.
    hub.publish(channel_, r.body, isBinaryAnswer(r));
    return;
  }
  // Strings go out as their text, anything else as compact JSON.
  for (const auto& element : doc) {
    hub.publish(channel_, element.is_string() ? element.get<std::string>() : element.dump(), false);
  }
}

bool Poller::advanceCursor(const HttpResponse& r) {
  const LongPollConfig& lp = route_->longpoll;
  if (!lp.cursor_header.empty()) {
    const std::string* v = findHeader(r.headers, lp.cursor_header);
    if (v == nullptr) return false;
    cursor_ = *v;
    return true;
  }
  if (!lp.cursor_json.empty()) {
    if (r.body.empty()) return false;
    nlohmann::json doc = nlohmann::json::parse(r.body, nullptr, false);
    return !doc.is_discarded() && jsonPath(doc, lp.cursor_json, cursor_);
  }
  return true;  // no cursor configured: nothing to advance
}

void Poller::backoff(const std::string& why) {
  uint64_t delay = retryLater();
  UPGATE_LOG(warn, 0, "channel {}: poll failed ({}); retry {} in {} ms, cursor \"{}\" kept",
             channelForLog(channel_), why, failures_, delay, cursor_);
}

uint64_t Poller::retryLater() {
  const LongPollConfig& lp = route_->longpoll;
  uint64_t base = static_cast<uint64_t>(lp.backoff_initial.count());
  uint64_t cap = static_cast<uint64_t>(lp.backoff_max.count());
  uint64_t delay = base << std::min(failures_, 20u);
  if (delay > cap) delay = cap;
  ++failures_;
  // Full jitter on the upper half: many gateways restarting together do not poll in lockstep.
  static thread_local std::minstd_rand rng{std::random_device{}()};
  delay = delay / 2 + rng() % (delay / 2 + 1);
  uv_timer_start(&retry_timer_, onRetryTimer, delay, 0);
  return delay;
}

void Poller::onRetryTimer(uv_timer_t* t) noexcept {
  ownerOf<Poller>(t)->poll();
}

}  // namespace upgate
