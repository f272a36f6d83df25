"""The Data Act Art. 3(2) data sheet: its figures follow the signal catalogue and the rules, its routes exist."""

from __future__ import annotations

from importlib import resources

import pytest
from fastapi.routing import APIRoute

from carvault.access.audit import Actor
from carvault.compliance.change_rates import DATA_FILE, measure, measured, render
from carvault.compliance.consent import IN_CAR_CATEGORIES, default_on
from carvault.compliance.data_sheet import ACCESS_ROUTES, STORED_BYTES_PER_SAMPLE, build
from carvault.compliance.sharing import NEVER_SHAREABLE
from carvault.region import Region
from carvault.signals import CATEGORIES, catalogue
from carvault.store.metadata import Vehicle
from carvault.web.app import create_app
from tests.web.test_route_access import _routes

ADMIN = Actor("staff", "region_admin:alice")


def test_every_category_and_signal_of_the_catalogue_is_on_the_sheet(region: Region) -> None:
    sheet = region.data_sheet.json()
    cat = catalogue()
    listed = {s["path"]: (c["name"], s) for c in sheet["categories"] for s in c["signals"]}
    assert set(listed) == set(cat.paths)
    for path, (category, s) in listed.items():
        sig = cat[path]
        assert (category, s["datatype"], s["unit"], s["rate_hz"]) == (
            sig.category,
            sig.datatype,
            sig.unit or None,
            sig.rate_hz,
        )
    assert [c["name"] for c in sheet["categories"]] == list(CATEGORIES)
    for c in sheet["categories"]:
        meta = CATEGORIES[c["name"]]
        assert (c["privacy"], c["retention_days"], c["purpose"]) == (
            meta.privacy.value,
            meta.retention_days,
            meta.purpose,
        )
        assert sheet["storage"]["retention"][c["name"]] == meta.retention_days
        assert c["shareable"] == (c["name"] not in NEVER_SHAREABLE)
        if c["name"] in IN_CAR_CATEGORIES:
            assert c["collection"] == "in_car"
        else:
            assert c["collection"] == ("default" if default_on(c["name"]) else "opt_in")


def test_volumes_are_rates_times_time_times_the_measured_size(region: Region) -> None:
    sheet = region.data_sheet.json()
    cat = catalogue()
    for c in sheet["categories"]:
        per_s = sum(s.rate_hz for s in cat if s.category == c["name"])
        v = c["volume"]
        assert v["samples_per_second"] == per_s
        assert v["samples_per_hour_of_driving"] == per_s * 3600
        assert v["bytes_per_hour_of_driving"] == round(per_s * 3600 * STORED_BYTES_PER_SAMPLE)
        assert v["samples_per_day_continuous"] == per_s * 86_400
    everything = sheet["volume"]["everything_consented"]
    assert everything["samples_per_second"] == sum(s.rate_hz for s in cat)
    default = sheet["volume"]["default_collection"]
    assert default["samples_per_second"] == sum(s.rate_hz for s in cat if default_on(s.category))
    assert 0 < default["samples_per_second"] < everything["samples_per_second"]  # sensitive data is opt-in
    assert sheet["volume"]["bytes_per_sample"] == STORED_BYTES_PER_SAMPLE


def test_typical_volume_counts_change_only_signals_at_their_measured_rate(region: Region) -> None:
    sheet = region.data_sheet.json()
    cat = catalogue()
    rates = measured()

    def typical(sigs: list) -> float:  # computed here from the file, not with the module's helper
        periodic = sum(s.rate_hz for s in sigs if not s.on_change)
        return periodic + sum(rates[s.path].sends / rates[s.path].on_seconds for s in sigs if s.on_change)

    for c in sheet["categories"]:
        sigs = [s for s in cat if s.category == c["name"]]
        v, t = c["volume"], c["volume"]["typical"]
        assert t["samples_per_second"] == pytest.approx(typical(sigs), abs=1e-6)
        # Whole samples and bytes, rounded: the rates summed in another order may land a product on the other side
        # of a .5, so one unit either way is the same figure.
        assert abs(t["samples_per_hour_of_driving"] - typical(sigs) * 3600) <= 1
        assert abs(t["bytes_per_hour_of_driving"] - typical(sigs) * 3600 * STORED_BYTES_PER_SAMPLE) <= 1
        assert abs(t["bytes_per_day_continuous"] - typical(sigs) * 86_400 * STORED_BYTES_PER_SAMPLE) <= 1
        if any(s.on_change for s in sigs):
            assert t["samples_per_second"] < v["samples_per_second"]  # the maximum stays stated beside it
        else:
            assert t["samples_per_second"] == v["samples_per_second"]
        for s in c["signals"]:
            sig = cat[s["path"]]
            want = rates[sig.path].sends / rates[sig.path].on_seconds if sig.on_change else sig.rate_hz
            assert s["typical_rate_hz"] == pytest.approx(want, abs=1e-6) and s["typical_rate_hz"] <= s["rate_hz"]
    everything = sheet["volume"]["everything_consented"]
    on_change = sum(s.rate_hz for s in cat if s.on_change)
    assert on_change == 200  # the catalogue's change-only signals: counted at 200 Hz at most ...
    assert everything["typical"]["samples_per_second"] < everything["samples_per_second"] - on_change + 1  # ... < 1
    assert "measured with the simulator" in sheet["volume"]["typical_method"]


def test_every_change_only_signal_has_a_measured_rate() -> None:
    assert {s.path for s in catalogue() if s.on_change} == set(measured())
    assert len({r.on_seconds for r in measured().values()}) == 1 and all(r.sends > 0 for r in measured().values())


@pytest.mark.slow
def test_the_change_rates_file_is_what_the_measurement_gives_now() -> None:
    kept = (resources.files("carvault") / DATA_FILE).read_text(encoding="utf-8")
    assert render(measure()) == kept, "regenerate: python -m carvault.compliance.change_rates"


def test_the_measured_bytes_per_sample_is_the_one_in_the_benchmarks() -> None:
    from pathlib import Path

    bench = (Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert f"| Storage, bytes/sample (segments), 60 s batches vs peer wide | {STORED_BYTES_PER_SAMPLE:.2f} B |" in bench


def test_every_route_the_sheet_names_exists(region: Region) -> None:
    app = create_app(region)
    served = {(m, r.path) for r in app.state.api_routes if isinstance(r, APIRoute) for m in r.methods or ()}
    for _id, _kind, method, path, _text in ACCESS_ROUTES:
        assert (method, path) in served, (method, path)
    ws = {path for path, _route in _routes(app.routes)}  # every route, WebSockets included
    assert region.data_sheet.json()["continuous"]["real_time_route"] in ws


def test_the_sheet_names_the_models_and_the_operator(region: Region) -> None:
    assert region.data_sheet.json()["models"] is None
    assert region.data_sheet.json()["data_holder"]["name"] is None
    with region.db.session() as s:
        for vin, model in (
            ("LRWYGCEK1NC000001", "Model A"),
            ("LRWYGCEK1NC000002", "Model A"),
            ("LRWYGCEK1NC000003", "Model B"),
            ("LRWYGCEK1NC000004", ""),
        ):
            s.add(Vehicle(vin=vin, region="cn", model=model, public_key=bytes(32), pairing_code_hash="x"))
    region.operator_profile.save(
        {
            "operator_name": "Example Motors",
            "security_lead": "Li Wei",
            "security_lead_contact": "security@example.cn",
            "rights_contact": "Privacy desk",
            "rights_contact_contact": "privacy@example.cn",
        },
        ADMIN,
    )
    sheet = region.data_sheet.json()
    assert sheet["models"] == ["Model A", "Model B"]
    assert sheet["data_holder"] == {
        "name": "Example Motors",
        "rights_contact": "Privacy desk",
        "rights_contact_contact": "privacy@example.cn",
    }
    assert "Li Wei" not in str(sheet)  # the security lead is for the regulator's report, not the public sheet


def test_build_is_pure_over_its_inputs() -> None:
    a = build(catalogue(), region="eu", models=["X"], operator={"name": "O"})
    b = build(catalogue(), region="eu", models=["X"], operator={"name": "O"})
    assert a == b and a["region"] == "eu" and a["storage"]["region"] == "eu"


def test_every_kind_and_route_has_its_text_in_both_languages() -> None:
    from carvault.web.i18n import messages

    for lang in ("en", "zh-CN"):
        texts = messages(lang)
        for key, kind, *_ in ACCESS_ROUTES:
            assert f"data_sheet.route.{key}" in texts and f"data_sheet.kind.{kind}" in texts, (lang, key)
        for name in CATEGORIES:
            assert f"category.{name}" in texts and f"purpose.{name}" in texts, (lang, name)
