#pragma once
// llhttp is C: its callbacks get the llhttp_t, whose `data` points at the C++ owner. These
// trampolines recover the owner and call one member (Node's Proxy<>::Raw), so a settings table
// is built from members: { .on_url = dataTrampoline<RequestParser, &RequestParser::onUrl> }.
// Members are noexcept, so nothing unwinds through llhttp's frames.

#include <llhttp.h>

#include <cstddef>

namespace upgate {

template <typename Owner, int (Owner::*Member)(const char*, size_t) noexcept>
int dataTrampoline(llhttp_t* parser, const char* at, size_t len) noexcept {
  return (static_cast<Owner*>(parser->data)->*Member)(at, len);
}

template <typename Owner, int (Owner::*Member)() noexcept>
int eventTrampoline(llhttp_t* parser) noexcept {
  return (static_cast<Owner*>(parser->data)->*Member)();
}

}  // namespace upgate
