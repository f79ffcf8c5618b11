"""The Prefect flows, by name (module:function), importable without importing Prefect."""

FLOWS = {"eve": "flows.eve:eve", "baselines": "flows.baselines:baselines", "sweep": "flows.sweep:sweep",
         "w2s_classification": "flows.w2s_classification:w2s_classification", "w2s_theory": "flows.w2s_theory:w2s_theory"}


def flow_named(name: str):
    import importlib

    module, attr = FLOWS[name].split(":")
    return getattr(importlib.import_module(module), attr)
