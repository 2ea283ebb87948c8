"""Noise replacement: equal to a slow one-source-at-a-time NoiseReplacer, seeded, deterministic."""

import dataclasses
import shutil

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forcedphot import query
from forcedphot.config import ForcedPhotConfig
from forcedphot.errors import InputError
from forcedphot.io.parquet import read_provenance
from forcedphot.noise import NoiseReplacer, clipped_stats_1d
from forcedphot.plan import plan_quanta
from forcedphot.plugins import PLUGINS, MeasurementContext
from forcedphot.quantum import load_quantum
from forcedphot.repository import DataId, Repository
from forcedphot.runner import run_all
from forcedphot.sim import load_recipe, simulate
from forcedphot.stages import SourcePixels
from forcedphot.task import ForcedPhotCoaddTask
from tests.kernels.noise_corrections import footprint_pixels

COMPARED = {  # plugin -> output columns compared
    "PsfFlux": ["psfFlux", "psfFluxErr", "psfFlux_chi2"],
    "GaussianFlux": ["gaussianFlux"],
    "CircularApertureFlux": ["ap03Flux", "ap06Flux", "ap12Flux", "ap17Flux", "ap25Flux"],
    "KronFlux": ["kronFlux"],
    "LocalBackground": ["localBackground", "localBackground_stdev"],
    "SdssShape": ["sdssShape_xx", "sdssShape_yy", "sdssShape_flux"],
    "SdssCentroid": ["sdssCentroid_x", "sdssCentroid_y"],
}


@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    root = tmp_path_factory.mktemp("crowded") / "repo"
    simulate(load_recipe("tiny", seed=23, n_stars=260, n_galaxies=160, n_close_pairs=40), root, progress=False)
    repo = Repository(root)
    quantum = next(q for q in plan_quanta(repo) if q.data_id == DataId(0, 0, "r"))
    return repo, quantum


def _slow_noise_image(inputs, seed, mean, sigma):
    """Rubin's loop: each footprint in catalogue order gets its own bbox-sized noise draw."""
    coadd, fps = inputs.coadd, inputs.ref["footprints"]
    image = coadd.image.astype(np.float32).copy()
    rng = np.random.default_rng(np.random.PCG64(seed))
    for i in np.flatnonzero(fps.has):
        x0, y0, x1, y1 = fps.bbox[i]
        noise = rng.standard_normal((y1 - y0 + 1) * (x1 - x0 + 1)).reshape(y1 - y0 + 1, x1 - x0 + 1)
        for s in range(fps.span_offsets[i], fps.span_offsets[i + 1]):
            y, a, b = fps.span_y[s], fps.span_x0[s], fps.span_x1[s]
            ly = y - coadd.bbox.min_y
            if 0 <= ly < image.shape[0]:
                xs = np.arange(a, b + 1)
                on = (xs >= coadd.bbox.min_x) & (xs <= coadd.bbox.max_x)
                image[ly, xs[on] - coadd.bbox.min_x] = noise[y - y0, xs[on] - x0] * sigma + mean
    return image


def _insert(image, inputs, fp_row):
    """Put footprint ``fp_row``'s heavy values into a copy of the image."""
    coadd, fps = inputs.coadd, inputs.ref["footprints"]
    out = image.copy()
    value_offsets, all_values = fps.heavy()
    values = all_values[value_offsets[fp_row]:value_offsets[fp_row + 1]]
    k = 0
    for s in range(fps.span_offsets[fp_row], fps.span_offsets[fp_row + 1]):
        y, a, b = fps.span_y[s], fps.span_x0[s], fps.span_x1[s]
        for x in range(a, b + 1):
            ly, lx = y - coadd.bbox.min_y, x - coadd.bbox.min_x
            if 0 <= ly < out.shape[0] and 0 <= lx < out.shape[1]:
                out[ly, lx] = values[k]
            k += 1
    return out


def _measure(inputs, image, rows, config, replacement=None, ref_wcs=None):
    coadd = dataclasses.replace(inputs.coadd, image=image)
    ref = {k: (v[rows] if isinstance(v, np.ndarray) else v) for k, v in inputs.ref.items()
           if k not in ("footprints", "footprint_spans", "externalId")}
    ref["footprint_spans"] = (np.zeros(rows.size + 1, int), *(np.zeros(0, int),) * 3)
    ctx = MeasurementContext(coadd, config, ref, ref_wcs=ref_wcs, replacement=replacement,
                             pixels=SourcePixels.build(coadd, rows.size))
    out = {}
    for name in ["TransformedCentroid", "TransformedShape", *COMPARED]:
        out.update(PLUGINS[name](config).measure(ctx))
    return out


def test_vectorised_noise_replacement_equals_the_sequential_noise_replacer(crowded):
    repo, quantum = crowded
    task = ForcedPhotCoaddTask(repo)
    inputs = load_quantum(quantum)
    replacer = task.make_noise_replacer(inputs)
    seed = task.metadata["noise"]["seed"]
    slow_base = _slow_noise_image(inputs, seed, replacer.mean, replacer.sigma)
    np.testing.assert_array_equal(replacer.base, slow_base)

    config = ForcedPhotConfig()
    n = inputs.n
    wcs = task._ref_wcs(inputs)
    # vectorised: all sources at once on the noise image plus sparse corrections
    everyone = np.arange(n)
    ref_all = {k: v for k, v in inputs.ref.items()}
    pixels = SourcePixels.build(inputs.coadd, n, replacer=replacer, footprints=inputs.ref["footprints"])
    ctx = MeasurementContext(inputs.coadd, config, ref_all, ref_wcs=wcs, replacement=replacer, pixels=pixels)
    fast = {}
    for name in ["TransformedCentroid", "TransformedShape", *COMPARED]:
        fast.update(PLUGINS[name](config).measure(ctx))
    # sequential: insert, measure one source, remove (every blended source plus isolated ones)
    blended = np.flatnonzero((inputs.ref["parent"] != 0) | (inputs.ref["deblend_nChild"] > 0))
    chosen = np.unique(np.r_[blended[:50], everyone[::7][:25]])
    assert blended.size >= 10
    for i in chosen:
        used = replacer.used[i]
        image_i = _insert(slow_base, inputs, used)
        slow = _measure(inputs, image_i, np.array([i]), config, ref_wcs=wcs)
        for cols in COMPARED.values():
            for c in cols:
                a, b = fast[c][i], slow[c][0]
                if np.isfinite(b) or np.isfinite(a):
                    assert a == pytest.approx(b, rel=1e-6, abs=1e-6 * (abs(b) + 1)), (c, i, a, b)


def test_the_noise_image_is_the_same_drawn_in_turn_on_one_thread_or_beside_the_statistics_on_two(crowded, monkeypatch):
    from forcedphot import noise, threads

    repo, quantum = crowded
    inputs = load_quantum(quantum)
    prefetched = []

    class Counted(noise._Prefetch):
        def __init__(self, items, depth: int = 2):
            prefetched.append(1)
            super().__init__(items, depth)

    monkeypatch.setattr(noise, "_Prefetch", Counted)
    bases = {}
    try:
        for n in (1, 2):
            threads.configure(n)
            bases[n] = ForcedPhotCoaddTask(repo).make_noise_replacer(inputs).base
            assert len(prefetched) == (0 if n == 1 else 1), n  # one thread: no second thread for the draws
    finally:
        threads.configure()
    np.testing.assert_array_equal(bases[1], bases[2])


def test_every_band_of_a_patch_gets_the_same_noise_stream(crowded):
    repo, _ = crowded
    task = ForcedPhotCoaddTask(repo)
    standardised = []
    for band in ("g", "z"):
        q = next(q for q in plan_quanta(repo) if q.data_id == DataId(0, 0, band))
        inputs = load_quantum(q)
        r = task.make_noise_replacer(inputs)
        fp = inputs.ref["footprints"]
        owner, ys, xs, _ = footprint_pixels(fp)
        ly, lx = ys - inputs.coadd.bbox.min_y, xs - inputs.coadd.bbox.min_x
        standardised.append((r.base[ly, lx] - r.mean) / r.sigma)
    np.testing.assert_allclose(standardised[0], standardised[1], atol=1e-4)


def test_clipped_stats_match_a_gaussian():
    rng = np.random.default_rng(3)
    v = np.r_[rng.normal(5.0, 2.0, 200_000), rng.uniform(50, 500, 2000), [np.nan] * 10]
    mean, std = clipped_stats_1d(v)
    assert mean == pytest.approx(5.0, abs=0.02) and std == pytest.approx(2.0 * 0.986, rel=0.02)


def test_children_heavies_conserve_the_parent_flux(measured_tiny_repo):
    con = duckdb.connect()  # the query views expose no footprints: read them as the views read datasets
    con.register("f", query.arrow_dataset(measured_tiny_repo, "footprints"))
    t = con.sql("""
        SELECT p.id, p.band, list_sum(p."values") AS parent, sum(list_sum(c."values")) AS children
        FROM f p JOIN f c ON c.parent = p.id AND c.band = p.band AND c.tract = p.tract AND c.patch = p.patch
        GROUP BY ALL""").df()
    assert len(t) > 20
    np.testing.assert_allclose(t.children, t.parent, rtol=1e-5, atol=1e-3)


def test_identical_inputs_give_identical_output_bytes(tiny_repo, tmp_path):
    other = tmp_path / "twin"
    shutil.copytree(tiny_repo, other)
    for root in (tiny_repo, other):
        assert run_all(Repository(root), bands=["i"], progress=False).ok
    for p in Repository(tiny_repo).dataset_dir("forced_source").rglob("*.parquet"):
        twin = other / p.relative_to(tiny_repo)
        assert p.read_bytes() == twin.read_bytes(), p


def test_inconsistent_footprint_is_a_clear_error(tiny_repo):
    repo = Repository(tiny_repo)
    path = repo.footprints_path(DataId(0, 1, "i"))
    t = pq.read_table(path)
    values = t.column("values").to_pylist()
    values[3] = values[3][:-1]  # one pixel value short
    i = t.column_names.index("values")
    bad = t.set_column(i, t.schema.field(i), pa.array(values, t.schema.field(i).type))
    pq.write_table(bad.replace_schema_metadata(t.schema.metadata), path)
    q = next(q for q in plan_quanta(repo) if q.data_id == DataId(0, 1, "i"))
    with pytest.raises(InputError) as info:
        load_quantum(q)
    assert str(t.column("id")[3].as_py()) in str(info.value) and "heavy values" in str(info.value)


def test_missing_and_unmatched_footprints(tiny_repo):
    repo = Repository(tiny_repo)
    data_id = DataId(0, 3, "g")
    path = repo.footprints_path(data_id)
    t = pq.read_table(path)
    isolated = [i for i, p in zip(t.column("id").to_pylist(), t.column("parent").to_pylist()) if p == 0][:2]
    kept = t.filter(pa.compute.invert(pa.compute.is_in(t.column("id"), pa.array(isolated))))
    stranger = kept.slice(0, 1).set_column(0, kept.schema.field(0), pa.array([987654321], pa.int64()))
    pq.write_table(pa.concat_tables([kept, stranger]).replace_schema_metadata(t.schema.metadata), path)
    failed = run_all(repo, bands=["g"], patches=[3], progress=False)
    assert failed.failed and all(str(i) in failed.failed[0][1] for i in isolated)
    fallback = ForcedPhotConfig(missing_footprints="reference")
    done = run_all(repo, fallback, bands=["g"], patches=[3], progress=False)
    assert done.ok and done.unmatched_footprints == {str(data_id): 1}
    prov = read_provenance(repo.forced_source_path(data_id))
    assert prov["n_missing_footprints"] == 2 and prov["n_unmatched_footprints"] == 1
    rows = query.sql(repo, f"SELECT psfFlux FROM forced_source WHERE band = 'g' AND patch = 3 "
                           f"AND objectId IN ({isolated[0]}, {isolated[1]})").column("psfFlux").to_pylist()
    assert len(rows) == 2 and all(np.isfinite(rows))


SEPARATIONS = (1.0, 1.5, 2.0, 3.0)
RATIOS = (1.0, 10.0)


@pytest.fixture(scope="module")
def pairs_noiseless(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs") / "repo"
    simulate(load_recipe("pairs", noise=False), root, progress=False)
    assert run_all(Repository(root), bands=["i"], progress=False).ok
    return root


def test_deblending_removes_most_of_the_neighbour_bias(pairs_noiseless):
    """Star pairs at 1-3 FWHM, 1:1 and 1:10: deblended PSF-flux bias <= 1/3 of the undeblended bias."""
    recipe = load_recipe("pairs")
    n_pairs = len(recipe.pair_grid) * recipe.pairs_per_cell
    t = query.sql(pairs_noiseless, f"""
        SELECT t.source_id % {n_pairs} AS pair, t.source_id >= {n_pairs} AS second,
               f.psfFlux / t.flux - 1 AS deblended, f.undeblended_psfFlux / t.flux - 1 AS undeblended,
               f.parentObjectId <> 0 AS blended
        FROM forced_source f JOIN truth t ON t.id = f.objectId AND t.band = f.band""").to_pandas()
    t["cell"] = t.pair // recipe.pairs_per_cell
    assert t.blended.all()  # every pair was detected as one blend of two children
    print("\nsep/FWHM ratio component  deblended_bias  undeblended_bias")
    for cell, (sep, ratio) in enumerate(recipe.pair_grid):
        for second, g in t[t.cell == cell].groupby("second"):
            deb, undeb = g.deblended.mean(), g.undeblended.mean()
            name = "faint" if (second and ratio > 1) else ("bright" if ratio > 1 else "either")
            print(f"{sep:7.1f} 1:{ratio:<4g} {name:9s} {deb:+14.2e} {undeb:+16.2e}")
            assert abs(deb) <= abs(undeb) / 3, (sep, ratio, second, deb, undeb)


def test_scarlet_model_data_gives_the_same_heavies_and_runs_end_to_end(tiny_repo):
    """Heavies derived from the model data (morphology x spectrum, convolved to the observed PSF)
    match the stored ones, which the simulator made from its true models, and a run works on them."""
    from forcedphot.io.coadd import read_coadd
    from forcedphot.quantum import read_footprints

    repo = Repository(tiny_repo)
    quanta = plan_quanta(repo, footprint_dataset="scarlet")
    assert all(q.ready for q in quanta)
    worst = 0.0
    for q in quanta[::3]:
        derived = read_footprints(q, read_coadd(q.coadd_file), "scarlet").to_pandas().set_index("id")
        stored = pq.read_table(q.footprints_file).to_pandas().set_index("id")
        assert set(derived.index) == set(stored.index)
        for i, row in stored[stored.parent != 0].iterrows():
            parent_flux = np.abs(stored.loc[row.parent, "values"]).sum()
            worst = max(worst, abs(derived.loc[i, "values"].sum() - row["values"].sum()) / parent_flux)
            np.testing.assert_array_equal(derived.loc[i, "span_y"], row.span_y)
    print(f"worst child flux difference / parent flux: {worst:.1e}")
    assert worst < 1e-3
    summary = run_all(repo, ForcedPhotConfig(footprint_dataset="scarlet"), bands=["r"], progress=False)
    assert summary.ok and len(summary.done) == 4
    prov = read_provenance(repo.forced_source_path(DataId(0, 0, "r")))
    assert set(prov["inputs"]) == {"ref", "coadd", "scarlet_blends", "scarlet_sources"}
