"""Data: read MedMCQA, ARC and medical-instruct rows into canonical schemas, validate, split, build prompts.

One concept per module:
    schema.py      the canonical columns and their `datasets.Features`
    readers.py     raw records (with file + line) from JSONL / JSON / CSV / Parquet / save_to_disk / the Hub
    validate.py    bad-row bookkeeping and the strict | skip policy
    medmcqa.py     MedMCQA loader (Hub 0-based `cop`, original release 1-based `cop`)
    arc.py         ARC loader (Hub and local forms; trimmed to 4 options keeping the answer)
    instruct.py    medical instruct loader (Shekswess mistral-instruct, medalpaca wikidoc, MedQuAD)
    splits.py      dataset sizes (micro | mini | mega) and first-N / stratified selection
    prompts.py     the paper's and the harness's MCQ templates, the SFT template, tokenisation helpers
    synthetic.py   a seeded generator whose answers a tiny model can learn (offline demos and tests)
    prepare.py     everything above into one folder (parquet + card.json), atomically
    card.py        the data card as a rich table

    python -c "from medminds_hpc.data.prepare import prepare; prepare('micro', source='synthetic')"

Importing this package is cheap: `datasets`, `pyarrow`, `pandas` and `torch` are imported inside functions.
"""
