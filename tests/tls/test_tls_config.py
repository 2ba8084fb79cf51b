"""Bad TLS files at start are configuration errors: `upgate -t` and a real start both exit 2,
naming the file and giving OpenSSL's reason (missing file, key that does not match the
certificate, expired certificate, not PEM, missing CA files), and no listener is opened.
Good TLS configs pass `upgate -t`."""

import os
import subprocess
import unittest

import harness

import tlsutil
from tlsutil import Pki, tls_listener

RUN_TIMEOUT = 20.0


class TlsConfigFilesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tlsutil.temp_dir(cls)
        pki = cls.pki = Pki(os.path.join(cls.dir, "pki"))
        cls.ca = pki.ca("ca", "upgate test CA")
        cls.a = pki.leaf("a", cls.ca, "a.example.com", dns=["a.example.com"])
        cls.b = pki.leaf("b", cls.ca, "b.example.com", dns=["b.example.com"])
        cls.expired = pki.dated_leaf("expired", cls.ca, "old.example.com", "20200101000000Z",
                                     "20200201000000Z", dns=["old.example.com"])
        cls.garbage = pki.path("garbage.pem")
        with open(cls.garbage, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n"
                    "-----END CERTIFICATE-----\n")
        cls.missing = pki.path("does-not-exist.pem")
        cls.counter = 0

    # -- helpers ----------------------------------------------------------------------------
    def config(self, certs=None, client_auth=None, upstream_tls=None, second=None):
        tls = {}
        if client_auth:
            tls["client_auth"] = client_auth
        listeners = [tls_listener("secure", certs if certs is not None else [self.a], **tls)]
        if second is not None:
            listeners.append(tls_listener("second", second))
        up = {"endpoints": ["127.0.0.1:9"]}
        if upstream_tls:
            up["tls"] = upstream_tls
        return harness.make_config(
            upstreams={"up": up},
            routes=[{"name": "all", "match": {"path_prefix": "/"}, "upstream": "up"}],
            listeners=listeners)

    def write(self, config):
        type(self).counter += 1
        path = os.path.join(self.dir, "upgate-%d.yaml" % self.counter)
        with open(path, "w") as f:
            f.write(harness.to_yaml(config) + "\n")
        return path

    def run_upgate(self, *args):
        proc = subprocess.run([harness.upgate_bin()] + list(args), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=RUN_TIMEOUT)
        return proc.returncode, (proc.stdout + proc.stderr).decode("utf-8", "replace")

    def assertBadFile(self, config, path, reason, what):
        conf = self.write(config)
        code, out = self.run_upgate("-t", "-c", conf)
        if "unknown key" in out:
            self.fail("%s: this upgate does not accept the tls: keys yet:\n%s" % (what, out))
        self.assertEqual(code, 2, "%s: upgate -t exited %s, want 2:\n%s" % (what, code, out))
        self.assertIn(path, out, "%s: upgate -t does not name %s:\n%s" % (what, path, out))
        self.assertRegex(out, reason, "%s: upgate -t gives no reason like /%s/:\n%s"
                         % (what, reason, out))
        self.assertNotIn("configuration OK", out)
        # A real start fails the same way, before opening any listener.
        ready = conf + ".ready"
        code, out = self.run_upgate("-c", conf, "--ready-file", ready)
        self.assertEqual(code, 2, "%s: start exited %s, want 2:\n%s" % (what, code, out))
        self.assertIn(path, out, "%s: start error does not name %s:\n%s" % (what, path, out))
        self.assertRegex(out, reason, "%s: start error gives no reason:\n%s" % (what, out))
        self.assertFalse(os.path.exists(ready), "%s: ready file written" % what)

    def cert(self, cert, key=None):
        return tlsutil.Cert("x", cert, key or self.a.key, "x")

    # -- good -------------------------------------------------------------------------------
    def test_good_configs_pass(self):
        configs = {
            "two certificates": self.config(certs=[(self.a, ["a.example.com"]),
                                                   (self.b, ["*.b.example.com"])]),
            "self-signed": self.config(certs=[]),
            "client auth": self.config(client_auth={"ca": self.ca.cert, "required": True}),
            "upstream tls": self.config(upstream_tls={"ca": self.ca.cert,
                                                      "server_name": "up.example.com"}),
            "upstream tls, system store": self.config(upstream_tls={"ca": "system"}),
            "settings": self.config(),
        }
        configs["settings"]["listeners"][0]["tls"].update(
            {"min_version": "1.3", "session_tickets": True, "ticket_key_rotation": "1h",
             "groups": "X25519:P-256"})
        for what, config in configs.items():
            with self.subTest(what):
                code, out = self.run_upgate("-t", "-c", self.write(config))
                self.assertEqual(code, 0, "%s:\n%s" % (what, out))
                self.assertIn("configuration OK", out)

    # -- bad files --------------------------------------------------------------------------
    def test_missing_certificate_file(self):
        self.assertBadFile(self.config(certs=[self.cert(self.missing)]), self.missing,
                           r"(?i)no such file", "missing certificate")

    def test_missing_key_file(self):
        self.assertBadFile(self.config(certs=[self.cert(self.a.cert, self.missing)]),
                           self.missing, r"(?i)no such file", "missing key")

    def test_key_does_not_match_certificate(self):
        self.assertBadFile(self.config(certs=[self.cert(self.a.cert, self.b.key)]), self.b.key,
                           r"(?i)mismatch", "key of another certificate")

    def test_expired_certificate(self):
        self.assertBadFile(self.config(certs=[self.cert(self.expired.cert, self.expired.key)]),
                           self.expired.cert, r"(?i)expired", "expired certificate")

    def test_not_a_certificate(self):
        self.assertBadFile(self.config(certs=[self.cert(self.garbage)]), self.garbage,
                           r"(?i)(asn1|decod|pem|no start line|not enough data)",
                           "certificate file that is not a certificate")

    def test_bad_second_certificate(self):
        self.assertBadFile(self.config(certs=[self.a, self.cert(self.expired.cert,
                                                                self.expired.key)]),
                           self.expired.cert, r"(?i)expired", "expired second certificate")

    def test_bad_file_on_second_listener(self):
        self.assertBadFile(self.config(second=[self.cert(self.a.cert, self.b.key)]), self.b.key,
                           r"(?i)mismatch", "second listener, wrong key")

    def test_missing_client_ca(self):
        self.assertBadFile(self.config(client_auth={"ca": self.missing, "required": True}),
                           self.missing, r"(?i)no such file", "missing client CA")

    def test_missing_upstream_ca(self):
        self.assertBadFile(self.config(upstream_tls={"ca": self.missing,
                                                     "server_name": "up.example.com"}),
                           self.missing, r"(?i)no such file", "missing upstream CA")

    def test_upstream_client_key_mismatch(self):
        self.assertBadFile(self.config(upstream_tls={"ca": self.ca.cert, "cert": self.a.cert,
                                                     "key": self.b.key}),
                           self.b.key, r"(?i)mismatch", "upstream client cert with wrong key")


if __name__ == "__main__":
    unittest.main(verbosity=2)
