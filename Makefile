# Thin wrapper: install dependencies, build with CMake, run, test.
#   make run    install deps, build, start the demo apps and upgate on conf/upgate.yaml
#   make test   install deps, build (warnings are errors), run every test through ctest
#   make install  the gateway, the plugin ABI header and its pkg-config file (PREFIX, DESTDIR)
BUILD      ?= build
BUILD_TYPE ?= RelWithDebInfo
CMAKE_ARGS ?=
CTEST_ARGS ?=
SANITIZE   ?= address,undefined
PREFIX     ?=

# Debian bookworm packages the build, the tests and the demo need.
DEPS := cmake make g++ pkg-config libuv1-dev libssl-dev libyaml-cpp-dev catch2 node-llhttp \
        libspdlog-dev libfmt-dev libcli11-dev nlohmann-json3-dev zlib1g-dev python3 python3-websockets python3-prometheus-client openssl curl procps \
        ca-certificates

.PHONY: all deps build run test test-asan install clean

all: build

deps:
	@missing=$$(for p in $(DEPS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | \
	  grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_ARGS)
	cmake --build $(BUILD) -j$$(nproc)

test: CMAKE_ARGS += -DUPGATE_WERROR=ON -DUPGATE_BUILD_TESTS=ON
run: CMAKE_ARGS += -DUPGATE_BUILD_TESTS=OFF

run: build
	@echo "demo: echo upstream on 127.0.0.1:9001, stock-ticker legacy app on 127.0.0.1:8000"
	@/usr/bin/python3 docker/demo/echo_server.py --port 9001 & echo_pid=$$!; \
	/usr/bin/python3 docker/demo/ticker_app.py --port 8000 & app_pid=$$!; \
	trap 'kill $$echo_pid $$app_pid 2>/dev/null' EXIT INT TERM; \
	echo "open http://127.0.0.1:8080/ (or https://127.0.0.1:8443/, self-signed) for the live ticker"; \
	$(BUILD)/gateway/upgate -c conf/upgate.yaml

test: build
	ulimit -n $$(ulimit -Hn); ctest --test-dir $(BUILD) --output-on-failure $(CTEST_ARGS)

# The same tests on an ASan/UBSan build in its own directory, but for the container image, the
# fuzzers (which build their own sanitized binaries) and the benchmark smoke.
test-asan:
	$(MAKE) test BUILD=build-asan BUILD_TYPE=Debug CMAKE_ARGS="-DUPGATE_SANITIZE=$(SANITIZE)" \
	  CTEST_ARGS="-LE '(container|fuzz|bench)' $(CTEST_ARGS)"

# Installs what $(BUILD) holds (built first; made if there is none, without changing the options
# of one that exists): bin/upgate, include/upgate/plugin.h and the upgate-plugin.pc that
# out-of-tree plugins build with. PREFIX overrides the configured prefix (/usr/local);
# DESTDIR stages the files elsewhere.
install:
	@[ -f $(BUILD)/CMakeCache.txt ] || $(MAKE) build
	cmake --build $(BUILD) -j$$(nproc)
	cmake --install $(BUILD) $(if $(PREFIX),--prefix $(PREFIX))

clean:
	rm -rf $(BUILD) build-asan
