"""chatradio-eval: the ChatRadio-Valuer paper's evaluation over a chatradio
service — generate every report's impression, score it with ROUGE against the
reference, write resumable per-report results, tables, plots and comparisons."""
