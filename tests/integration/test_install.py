"""`make install` as a plugin author meets it: install the build into a staging root
(DESTDIR, so the configured prefix is not where the files end up), find upgate-plugin.pc
there, build plugins/examples/ with their own Makefiles, the system compiler and -Werror against
the INSTALLED header only (the example sources are copied out of the tree, so the Makefiles'
fallback to the source tree's header cannot kick in), then load both shared objects with the
INSTALLED upgate binary and check them on real handshakes.

Needs $UPGATE_BUILD_DIR (set by ctest) and pkg-config, cc, c++, make.
"""

import filecmp
import glob
import os
import shutil
import subprocess
import tempfile
import unittest

import harness
from harness import GatewayTestCase, EchoUpstream, RawClient, accept_key, header_values, ws_key
from harness import ws_request

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
STEP_TIMEOUT = 180


def run(cmd, env=None, cwd=None):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=STEP_TIMEOUT, env=env,
                       cwd=cwd, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s%s" % (" ".join(cmd), r.returncode, r.stdout,
                                                         r.stderr))
    return r.stdout


def handshake(addr, path, headers=()):
    with RawClient(addr) as c:
        key = ws_key()
        c.send(ws_request(path, key=key, extra=list(headers)))
        resp = c.read_response()
        if resp.status == 101:
            if resp.header("Sec-WebSocket-Accept") != accept_key(key):
                raise AssertionError("bad Sec-WebSocket-Accept in %r" % resp)
            c.send_frame(harness.OP_CLOSE, harness.close_payload(1000))
        else:
            c.read_body(resp)
        return resp


class InstallTest(GatewayTestCase):
    @classmethod
    def setUpClass(cls):
        build = os.environ.get("UPGATE_BUILD_DIR")
        if not build:
            raise unittest.SkipTest("UPGATE_BUILD_DIR not set (ctest sets it)")
        for tool in ("pkg-config", "cc", "c++", "make"):
            if shutil.which(tool) is None:
                raise unittest.SkipTest("%s not found" % tool)
        cls.tmp = tempfile.mkdtemp(prefix="upgate-it-install-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.stage = os.path.join(cls.tmp, "stage")
        env = dict(os.environ, DESTDIR=cls.stage)
        run(["make", "--no-print-directory", "-C", ROOT, "install", "BUILD=" + build], env=env)

        pcs = glob.glob(os.path.join(cls.stage, "**", "pkgconfig", "upgate-plugin.pc"),
                        recursive=True)
        if len(pcs) != 1:
            raise AssertionError("want one installed upgate-plugin.pc, found %r" % pcs)
        cls.pc_dir = os.path.dirname(pcs[0])
        bins = glob.glob(os.path.join(cls.stage, "**", "bin", "upgate"), recursive=True)
        if len(bins) != 1:
            raise AssertionError("want one installed bin/upgate, found %r" % bins)
        cls.upgate = bins[0]
        # Only the staged .pc: nothing of the system's or the source tree's may leak in.
        cls.env = dict(os.environ, PKG_CONFIG_PATH=cls.pc_dir, PKG_CONFIG_LIBDIR=cls.pc_dir)
        yaml_pc = run(["pkg-config", "--variable=pcfiledir", "yaml-cpp"]).strip()
        cls.env["PKG_CONFIG_PATH"] += ":" + yaml_pc  # the C++ example also needs yaml-cpp

        cls.out = os.path.join(cls.tmp, "out")
        cls.src = os.path.join(cls.tmp, "src")
        for example in ("c_plugin", "cpp_plugin"):
            shutil.copytree(os.path.join(ROOT, "plugins", "examples", example),
                            os.path.join(cls.src, example))

    def test_pkg_config_points_into_the_staging_root(self):
        cflags = run(["pkg-config", "--cflags", "upgate-plugin"], env=self.env).split()
        includes = [f[2:] for f in cflags if f.startswith("-I")]
        self.assertEqual(len(includes), 1, cflags)
        inc = os.path.realpath(includes[0])
        self.assertTrue(inc.startswith(os.path.realpath(self.stage) + os.sep), inc)
        installed = os.path.join(inc, "upgate", "plugin.h")
        self.assertTrue(filecmp.cmp(installed, os.path.join(ROOT, "plugins", "include", "upgate",
                                                            "plugin.h"), shallow=False))
        version = run(["pkg-config", "--modversion", "upgate-plugin"], env=self.env).strip()
        self.assertRegex(version, r"^\d+\.\d+")

    def build_examples(self):
        gate = os.path.join(self.out, "header_gate.so")
        router = os.path.join(self.out, "path_router.so")
        run(["make", "--no-print-directory", "-C", os.path.join(self.src, "c_plugin"),
             "OUT=" + gate, "CFLAGS=-O2 -Werror"], env=self.env)
        run(["make", "--no-print-directory", "-C", os.path.join(self.src, "cpp_plugin"),
             "OUT=" + router, "CXXFLAGS=-O2 -Werror"], env=self.env)
        return gate, router

    def test_examples_built_against_the_installed_header_load_and_work(self):
        gate, router = self.build_examples()
        stable = self.start_peer(EchoUpstream(name="stable"))
        v2 = self.start_peer(EchoUpstream(name="v2"))
        config = harness.make_config(
            upstreams={"stable": {"endpoints": [stable.addr]}, "v2": {"endpoints": [v2.addr]}},
            routes=[{"name": "chat", "match": {"path_prefix": "/chat"}, "upstream": "stable",
                     "plugins": [
                         {"name": "gate", "path": gate,
                          "config": {"header": "X-Gate", "value": "open-sesame"}},
                         {"name": "router", "path": router,
                          "config": {"routes": {"/chat/v2/": "v2"}}}]}])
        # The installed binary runs the config (and `upgate -t` of it accepts it).
        gw = harness.Gateway(config, name="upgate[installed]")
        self.addCleanup(gw.cleanup)
        old = os.environ.get("UPGATE_BIN")
        os.environ["UPGATE_BIN"] = self.upgate
        try:
            gw.start()
        finally:
            if old is None:
                del os.environ["UPGATE_BIN"]
            else:
                os.environ["UPGATE_BIN"] = old
        self.addCleanup(gw.check_stopped_cleanly)
        self.assertEqual(os.path.realpath(gw.proc.args[0]), os.path.realpath(self.upgate))
        self.assertIn("configuration OK", run([self.upgate, "-t", "-c", gw.config_path]))

        resp = handshake(gw.addr(), "/chat/closed")
        self.assertEqual(resp.status, 403, resp)
        self.assertEqual(resp.header("X-Gate-Hint"), "ask the admin", resp)
        resp = handshake(gw.addr(), "/chat/v2/in", [("X-Gate", "open-sesame")])
        self.assertEqual(resp.status, 101, resp)
        seen = harness.poll_until(lambda: [r for r in v2.requests if r["path"] == "/chat/v2/in"],
                                  5, what="the v2 upstream's request")
        self.assertEqual(header_values(seen[0]["headers"], "X-Gate-Passed"), ["1"])
        self.assertEqual(stable.requests, [])
        self.assertGatewayAlive(gw)


if __name__ == "__main__":
    unittest.main(verbosity=2)
