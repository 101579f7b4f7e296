"""chatradio-eval against the real chatradio-server on both datasets of
../shared/data (English IU X-ray, Chinese COV-CTR): tables, plots, bad input,
kill-and-resume, --compare. Subsets (--limit) and few tokens keep it short;
every input file is still read and validated whole.

    CHATRADIO_SERVER=build/server/service/chatradio-server \\
        PYTHONPATH=clients/python /usr/bin/python3 -m unittest discover -s clients/python/tests -p 'test_eval.py'
"""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

from server_fixture import SHARED_DIR, Server, free_port, require_assets

IU = os.path.join(SHARED_DIR, "data", "iu-xray", "indiana_reports.csv")
COV = os.path.join(SHARED_DIR, "data", "cov-ctr", "reports_ZH_EN.csv")
TIMEOUT = 600


def eval_cmd(*args):
    return [sys.executable, "-m", "chatradio_client.eval"] + list(args)


def run_eval(*args):
    return subprocess.run(eval_cmd(*args), capture_output=True, text=True, timeout=TIMEOUT)


def read_csv(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def read_file(path, mode="r"):
    with open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
        return f.read()


def results(run_dir):
    with open(os.path.join(run_dir, "results.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class EvalCase(unittest.TestCase):
    def setUp(self):
        require_assets(self)
        if not (os.path.isfile(IU) and os.path.isfile(COV)):
            self.skipTest("../shared/data is missing")
        self.tmp = tempfile.mkdtemp(prefix="chatradio-eval-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def path(self, name):
        return os.path.join(self.tmp, name)


class Datasets(EvalCase):
    def test_both_datasets_tables_and_plots(self):
        run = self.path("run")
        with Server() as server:
            r = run_eval("run", "--preset", "iu-xray", "--input", IU, "--skip-incomplete", "--limit", "16",
                         "--max-tokens", "12", "--out", run, "--target", server.target, "--timeout", "300")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("skipped 520 incomplete rows", r.stdout)
            r = run_eval("run", "--preset", "cov-ctr", "--input", COV, "--limit", "16", "--max-tokens", "12",
                         "--out", run, "--target", server.target)
            self.assertEqual(r.returncode, 0, r.stderr)
            scored = server.requests("Score")
        recs = results(run)
        self.assertEqual(len(recs), 32)
        self.assertEqual(len({x["key"] for x in recs}), 32)
        self.assertEqual({x["language"] for x in recs}, {"en", "zh"})
        for x in recs:
            self.assertNotIn("error", x)
            self.assertLessEqual(x["tokens"]["generated"], 12)
            for k in ("rouge1", "rouge2", "rouge_l"):
                self.assertTrue(0.0 <= x["rouge"][k]["f"] <= 1.0)
            self.assertEqual(x["logprob"] is None, x["null_output"])
        self.assertEqual(scored, sum(not x["null_output"] for x in recs))
        # The English pairs share words now and then even with a story model.
        by_system = read_csv(os.path.join(run, "tables", "by_institution_system.csv"))
        self.assertEqual(by_system[0][:4], ["institution", "body system", "reports", "errors"])
        self.assertEqual([row[:3] for row in by_system[1:]],
                         [["Harbin Medical University", "chest", "16"], ["Indiana University", "chest", "16"],
                          ["all", "", "32"]])
        by_lang = read_csv(os.path.join(run, "tables", "by_modality_language.csv"))
        self.assertEqual([row[:3] for row in by_lang[1:]], [["ct", "zh", "16"], ["xr", "en", "16"], ["all", "", "32"]])
        timing = read_csv(os.path.join(run, "tables", "timing.csv"))
        self.assertEqual(timing[0], ["seconds per report", "reports", "mean", "p50", "p90", "p99", "paper (mean)"])
        self.assertEqual(timing[1][6], "22.36")
        md = read_file(os.path.join(run, "tables", "tables.md"))
        # The default: rouge_chinese-compatible ROUGE with jieba, named in the tables.
        modes = {(x["rouge_mode"], x["rouge_segmenter"]) for x in recs if not x["null_output"]}
        self.assertEqual(modes, {("chinese_compat", "jieba")})
        for lang in ("en", "zh"):
            self.assertIn("mode chinese_compat, segmenter jieba (%s)" % lang, md)
        self.assertIn("rouge_mode=chinese-compat", md)
        for stem in ("rouge_by_institution_system", "rouge_by_modality_language", "latency"):
            for ext in ("png", "svg"):
                self.assertGreater(os.path.getsize(os.path.join(run, "plots", stem + "." + ext)), 1000)
            self.assertIn("../plots/%s.png" % stem, md)
        # `report` rewrites the same tables and byte-identical plots from the results alone.
        files = [os.path.join(run, "tables", "tables.md")] + [os.path.join(run, "plots", p)
                                                               for p in os.listdir(os.path.join(run, "plots"))]
        before = {p: read_file(p, "rb") for p in files}
        r = run_eval("report", run)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual({p: read_file(p, "rb") for p in files}, before)

    def test_jsonl_with_columns(self):
        src = self.path("reports.jsonl")
        with open(src, "w", encoding="utf-8") as f:
            for i, (fi, im, lang, inst) in enumerate([("The lungs are clear.", "Normal chest.", "en", "site-a"),
                                                      ("双肺纹理清晰。", "未见异常。", "zh", "site-b")]):
                f.write(json.dumps({"rid": "r%d" % i, "text": fi, "ref": im, "lang": lang, "site": inst},
                                   ensure_ascii=False) + "\n")
        run = self.path("run")
        with Server() as server:
            r = run_eval("run", "--input", src, "--findings-column", "text", "--reference-column", "ref",
                         "--id-column", "rid", "--language-column", "lang", "--institution-column", "site",
                         "--modality", "ct", "--body-system", "chest", "--greedy", "--max-tokens", "8",
                         "--out", run, "--target", server.target, "--no-plots")
        self.assertEqual(r.returncode, 0, r.stderr)
        recs = sorted(results(run), key=lambda x: x["id"])
        self.assertEqual([(x["key"], x["institution"], x["language"], x["seed"]) for x in recs],
                         [("reports/r0", "site-a", "en", None), ("reports/r1", "site-b", "zh", None)])


class BadInput(EvalCase):
    """Each bad file exits 2 naming the row, before anything is sent, and an
    existing run folder is left exactly as it was."""

    def assert_refused(self, run, *args, expect):
        before = read_file(os.path.join(run, "results.jsonl"), "rb")
        r = run_eval("run", "--out", run, "--target", "127.0.0.1:%d" % free_port(), "--no-plots", *args)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn(expect, r.stderr)
        self.assertEqual(read_file(os.path.join(run, "results.jsonl"), "rb"), before)

    def test_bad_files(self):
        run = self.path("run")
        with Server() as server:
            r = run_eval("run", "--preset", "cov-ctr", "--input", COV, "--limit", "3", "--max-tokens", "4",
                         "--out", run, "--target", server.target, "--no-plots")
            self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(results(run)), 3)
        self.assert_refused(run, "--preset", "cov-ctr", "--input", COV, "--findings-column", "findingz",
                            expect="no column 'findingz' (its columns: image_id, findings, terminologies")
        self.assert_refused(run, "--preset", "iu-xray", "--input", IU,
                            expect="indiana_reports.csv row 3 (line 4) (id 3): empty findings")
        self.assert_refused(run, "--preset", "cov-ctr", "--input", COV, "--id-column", "image_id",
                            expect="row 33 (line 66): id '2020.02.13.20022673-p13-77%2.png' already used by row 32")
        bad = self.path("bad.csv")
        with open(bad, "wb") as f:
            f.write("findings,impression\nLungs clear.,Normal.\n".encode() + b"Heart \xff size.,Normal.\n")
        self.assert_refused(run, "--input", bad, expect="bad.csv line 3: invalid UTF-8 at byte 7")
        with open(bad, "w", encoding="utf-8") as f:
            f.write("findings,impression\nLungs clear.,Normal.\n  ,Normal.\n")
        self.assert_refused(run, "--input", bad, expect="bad.csv row 2 (line 3) (id 2): empty findings")
        jl = self.path("bad.jsonl")
        with open(jl, "w", encoding="utf-8") as f:
            f.write('{"findings": "a", "impression": "b"}\n{"findings": "a"\n')
        self.assert_refused(run, "--input", jl, expect="bad.jsonl line 2: not a JSON object")
        with open(jl, "w", encoding="utf-8") as f:
            f.write('{"findings": "a", "impression": "b"}\n{"findings": "a"}\n')
        self.assert_refused(run, "--input", jl, expect="bad.jsonl line 2: no key 'impression'")
        self.assert_refused(run, "--preset", "cov-ctr", "--input", COV, "--modality", "x-ray-vision",
                            expect="unknown modality 'x-ray-vision'")
        self.assert_refused(run, "--preset", "cov-ctr", "--input", COV, "--rouge-mode", "rouge-9",
                            expect="unknown rouge_mode 'rouge-9'; known: chinese_compat, lin")
        # Other sampling settings would mix two experiments in one folder.
        self.assert_refused(run, "--preset", "cov-ctr", "--input", COV, "--limit", "3", "--greedy",
                            expect="was started with other settings")


class KillAndResume(EvalCase):
    def test_kill_resume_same_tables_nothing_scored_twice(self):
        n, conc = 40, 2
        common = ["--preset", "cov-ctr", "--input", COV, "--limit", str(n), "--max-tokens", "24",
                  "--concurrency", str(conc), "--no-plots"]
        ref, run = self.path("reference"), self.path("resumed")
        # A report's tokens depend only on its seed: the engine is batch-invariant
        # (docs/architecture.md), so the order reports run in does not matter.
        with Server() as server:
            r = run_eval("run", "--out", ref, "--target", server.target, *common)
            self.assertEqual(r.returncode, 0, r.stderr)
            scored_before = server.requests("Score")
            proc = subprocess.Popen(eval_cmd("run", "--out", run, "--target", server.target, *common),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            lines = 0
            deadline = time.monotonic() + TIMEOUT
            while lines < 8 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
                if os.path.exists(os.path.join(run, "results.jsonl")):
                    with open(os.path.join(run, "results.jsonl"), "rb") as f:
                        lines = f.read().count(b"\n")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_at = len(results(run))
            self.assertLess(killed_at, n, "the run finished before it was killed")
            # A record torn by the kill mid-write is dropped and rewritten.
            with open(os.path.join(run, "results.jsonl"), "ab") as f:
                f.write(b'{"key": "cov-ctr/99", "impress')
            r = run_eval("run", "--out", run, "--target", server.target, *common)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("%d already done, %d to run" % (killed_at, n - killed_at), r.stdout)
            scored = server.requests("Score") - scored_before
        recs = results(run)
        self.assertEqual(len(recs), n)
        self.assertEqual(len({x["key"] for x in recs}), n)
        # Score calls: one per report, plus at most the ones in flight at the kill.
        self.assertLessEqual(scored, n + conc)
        for name in ("by_institution_system.csv", "by_modality_language.csv"):
            self.assertEqual(read_csv(os.path.join(run, "tables", name)), read_csv(os.path.join(ref, "tables", name)))
        a = {x["key"]: x["impression"] for x in results(ref)}
        self.assertEqual({x["key"]: x["impression"] for x in recs}, a)
        # Nothing left to do: a third run sends nothing.
        r = run_eval("run", "--out", run, "--target", "127.0.0.1:%d" % free_port(), *common)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("%d already done, 0 to run" % n, r.stdout)
        # --compare: identical runs, zero paired differences.
        r = run_eval("--compare", ref, run, "--out", self.path("cmp"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("| reports in both runs | %d | 0.0000 | 0.0000 | 0.0000 |" % n, r.stdout)
        self.assertTrue(os.path.isfile(self.path("cmp/compare_by_institution_system.csv")))


if __name__ == "__main__":
    unittest.main()
