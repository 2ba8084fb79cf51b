# Turns conf/upgate.yaml into a C++ string so the binary carries its default config.
file(READ ${IN} content HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${content}")
file(WRITE ${OUT} "// Generated from conf/upgate.yaml; do not edit.\n#include <cstddef>\nnamespace upgate {\n"
  "extern const char kDefaultConfig[];\nextern const size_t kDefaultConfigSize;\n"
  "const char kDefaultConfig[] = {${bytes} 0x00};\n"
  "const size_t kDefaultConfigSize = sizeof(kDefaultConfig) - 1;\n}\n")
