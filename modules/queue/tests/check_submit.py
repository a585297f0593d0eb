"""Parses an HTCondor submit file with the official bindings and prints, as JSON, every
command's value after condor's macro expansion and the queue count. Used by tests/condor.rs
when `import htcondor2` works (pip install htcondor)."""

import json
import sys

import htcondor2 as htcondor

with open(sys.argv[1]) as f:
    submit = htcondor.Submit(f.read())
values = {key: submit.expand(key) for key in submit.keys()}
values["queue"] = int(submit.getQArgs() or 1)
json.dump(values, sys.stdout)
