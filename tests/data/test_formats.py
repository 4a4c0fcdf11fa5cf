import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from structvpr.data.formats import (
    TOKYO_TM_FIELDS,
    read_gsv_cities,
    read_mat_dbstruct,
    read_msls,
    read_npy_gt,
    read_patchnetvlad,
)
from structvpr.data.vg import DatasetLayoutError


def _img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 6, 3), dtype=np.uint8)).save(path)


def _cells(names):
    arr = np.empty((len(names), 1), dtype=object)
    for i, n in enumerate(names):
        arr[i, 0] = n
    return arr


def _write_pitts(tmp_path, order="pitts", mat_name="pitts30k_test.mat"):
    db = ["000/000000_pitch1_yaw1.jpg", "000/000001_pitch1_yaw2.jpg"]
    qs = ["000/000005_pitch1_yaw1.jpg"]
    for n in db:
        _img(tmp_path / n)
    for n in qs:
        _img(tmp_path / "queries_real" / n)
    utm_db = np.array([[585000.0, 585030.0], [4477000.0, 4477000.0]])  # 2 x N, as in the files
    utm_q = np.array([[585004.0], [4477003.0]])
    if order == "pitts":
        values = ["test", _cells(db), utm_db, _cells(qs), utm_q, 2.0, 1.0, 25.0, 625.0, 100.0]
    else:  # TokyoTM-like positions: 1 dbImage, 2 utmDb, 4 qImage, 5 utmQ, 9 posDistThr
        values = ["val", _cells(db), utm_db, 0.0, _cells(qs), utm_q, 0.0, 2.0, 1.0, 25.0, 625.0, 100.0]
    dtype = [(f"f{i}", object) for i in range(len(values))]
    struct = np.empty((1, 1), dtype=dtype)
    for i, v in enumerate(values):
        struct[0, 0][f"f{i}"] = v
    path = tmp_path / "datasets" / mat_name
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"dbStruct": struct})
    return path


def test_pittsburgh_mat_round_trip(tmp_path):
    mat = _write_pitts(tmp_path)
    (tmp_path / "labels/000").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 6), dtype=np.uint8)).save(tmp_path / "labels/000/000000_pitch1_yaw1.png")
    m = read_mat_dbstruct(tmp_path, mat)
    assert [r.path.relative_to(tmp_path).as_posix() for r in m.database] == [
        "000/000000_pitch1_yaw1.jpg",
        "000/000001_pitch1_yaw2.jpg",
    ]
    assert m.database[1].utm == (585030.0, 4477000.0)
    assert m.queries[0].path == tmp_path / "queries_real/000/000005_pitch1_yaw1.jpg"
    assert m.queries[0].utm == (585004.0, 4477003.0)
    assert m.radius == 25.0
    assert m.database[0].label_path is not None and m.database[1].label_path is None


def test_tokyo_positions_are_configurable_and_wrong_positions_are_caught(tmp_path):
    mat = _write_pitts(tmp_path, order="tokyo")
    m = read_mat_dbstruct(tmp_path, mat, fields=TOKYO_TM_FIELDS)
    assert len(m.database) == 2 and len(m.queries) == 1
    with pytest.raises(DatasetLayoutError, match="pitts30k_test.mat: dbStruct fields are not at positions"):
        read_mat_dbstruct(tmp_path, mat)  # Pittsburgh positions on a Tokyo-like file


def test_malformed_mat_is_named(tmp_path):
    bad = tmp_path / "broken.mat"
    bad.write_bytes(b"MATLAB 5.0 nonsense")
    with pytest.raises(DatasetLayoutError, match=r"broken\.mat: not a readable \.mat file"):
        read_mat_dbstruct(tmp_path, bad)
    with pytest.raises(DatasetLayoutError, match=r"pitts30k_val\.mat: missing; expected the NetVLAD dbStruct file"):
        read_mat_dbstruct(tmp_path, tmp_path / "datasets/pitts30k_val.mat")


def _write_msls(tmp_path, city="cph"):
    for role, keys in (("database", ["d1", "d2", "d3"]), ("query", ["q1", "q2"])):
        folder = tmp_path / "train_val" / city / role
        for k in keys:
            _img(folder / "images" / f"{k}.jpg")
        with open(folder / "raw.csv", "w") as f:
            f.write(",key,lon,lat,ca,captured_at,pano\n")
            for i, k in enumerate(keys):
                f.write(f"{i},{k},12.5,55.6,0,0,{'True' if k == 'd3' else 'False'}\n")
        with open(folder / "postprocessed.csv", "w") as f:
            f.write(",key,easting,northing,night,control_panel,view_direction,unique_cluster\n")
            for i, k in enumerate(keys):
                f.write(f"{i},{k},{100 + 10 * i},{200},{'True' if k == 'q2' else 'False'},False,Forward,0\n")
        with open(folder / "subtask_index.csv", "w") as f:
            f.write(",all,s2w,w2s,o2n,n2o,d2n,n2d\n")
            for i, _ in enumerate(keys):
                f.write(f"{i},True,False,False,False,False,False,False\n")


def test_msls_native_excludes_panoramas(tmp_path):
    _write_msls(tmp_path)
    m = read_msls(tmp_path, ["cph"])
    assert [r.path.stem for r in m.database] == ["d1", "d2"]  # d3 is a panorama
    assert [r.note for r in m.queries] == ["day_forward_cph", "night_forward_cph"]
    assert m.queries[1].utm == (110.0, 200.0)
    assert "1 panoramas excluded" in m.notes[0]


def test_msls_malformed_csv_names_file_and_line(tmp_path):
    _write_msls(tmp_path)
    post = tmp_path / "train_val/cph/query/postprocessed.csv"
    post.write_text(post.read_text().replace("110,200", "east,200"))
    with pytest.raises(DatasetLayoutError, match=r"query/postprocessed.csv:3: cannot read key/easting/northing"):
        read_msls(tmp_path, ["cph"])
    with pytest.raises(DatasetLayoutError, match="sf/database/postprocessed.csv: missing"):
        read_msls(tmp_path, ["sf"])


def test_patchnetvlad_lists_and_npz(tmp_path):
    for n in ("ref/0000000.jpg", "ref/0000001.jpg", "query/0000000.jpg"):
        _img(tmp_path / n)
    (tmp_path / "nordland_imageNames_index.txt").write_text("ref/0000000.jpg\nref/0000001.jpg\n")
    (tmp_path / "nordland_imageNames_query.txt").write_text("query/0000000.jpg\n")
    np.savez(tmp_path / "nordland.npz", utmDb=np.array([[0, 0], [1, 1]]), utmQ=np.array([[0, 0]]), posDistThr=10)
    m = read_patchnetvlad(
        tmp_path,
        tmp_path / "nordland_imageNames_index.txt",
        tmp_path / "nordland_imageNames_query.txt",
        tmp_path / "nordland.npz",
    )
    assert len(m.database) == 2 and m.radius == 10.0 and m.database[1].utm == (1.0, 1.0)
    np.savez(tmp_path / "short.npz", utmDb=np.zeros((3, 2)), utmQ=np.zeros((1, 2)), posDistThr=10)
    with pytest.raises(DatasetLayoutError, match=r"short\.npz: 3 database and 1 query coordinates, but the lists name 2"):
        read_patchnetvlad(
            tmp_path,
            tmp_path / "nordland_imageNames_index.txt",
            tmp_path / "nordland_imageNames_query.txt",
            tmp_path / "short.npz",
        )


def test_npy_ground_truth_needs_explicit_trust(tmp_path):
    for n in ("db/a.jpg", "db/b.jpg", "q/x.jpg", "q/y.jpg"):
        _img(tmp_path / n)
    np.save(tmp_path / "set_dbImages.npy", np.array(["db/a.jpg", "db/b.jpg"]))
    np.save(tmp_path / "set_qImages.npy", np.array(["q/x.jpg", "q/y.jpg"]))
    gt = np.empty(2, dtype=object)
    gt[0], gt[1] = np.array([1]), np.array([0, 1])
    np.save(tmp_path / "set_gt.npy", gt, allow_pickle=True)
    args = (tmp_path, tmp_path / "set_dbImages.npy", tmp_path / "set_qImages.npy", tmp_path / "set_gt.npy")
    with pytest.raises(DatasetLayoutError, match="set_gt.npy: ground truth is an object array; pass allow_pickle=True"):
        read_npy_gt(*args)
    m = read_npy_gt(*args, allow_pickle=True)
    assert [p.tolist() for p in m.positives] == [[1], [0, 1]]
    np.save(tmp_path / "qidx.npy", np.array([1]))
    with pytest.raises(DatasetLayoutError, match="2 ground-truth rows for 1 queries"):
        read_npy_gt(*args, q_idx_npy=tmp_path / "qidx.npy", allow_pickle=True)


def test_gsv_cities(tmp_path):
    (tmp_path / "Dataframes").mkdir()
    rows = ["place_id,year,month,northdeg,city_id,lat,lon,panoid"]
    for pid, n in ((1, 4), (2, 2)):
        for j in range(n):
            rows.append(f"{pid},2019,{j + 1},90,Rome,41.9,12.5,pano{pid}{j}")
            _img(tmp_path / "Images/Rome" / f"Rome_{pid:07d}_2019_{j + 1:02d}_090_41.9_12.5_pano{pid}{j}.jpg")
    (tmp_path / "Dataframes/Rome.csv").write_text("\n".join(rows) + "\n")
    items = read_gsv_cities(tmp_path, ["Rome"], min_images=4)
    assert len(items) == 4 and {i.place for i in items} == {1}
    items = read_gsv_cities(tmp_path, ["London", "Rome"][1:], min_images=2)
    assert {i.place for i in items} == {1, 2}
    with pytest.raises(DatasetLayoutError, match="Dataframes/Paris.csv: missing"):
        read_gsv_cities(tmp_path, ["Paris"])


def test_gsv_cities_malformed_row_names_file_and_line(tmp_path):
    (tmp_path / "Dataframes").mkdir()
    (tmp_path / "Dataframes/Rome.csv").write_text(
        "place_id,year,month,northdeg,city_id,lat,lon,panoid\n1,2019,1,90,Rome,41.9,12.5,p\nseven,2019,1,90,Rome,41.9,12.5,q\n"
    )
    with pytest.raises(DatasetLayoutError, match=r"Dataframes/Rome\.csv:3: bad row"):
        read_gsv_cities(tmp_path, ["Rome"], min_images=1)


def _write_msls_val_city(root, city, rng, n_db=40, n_q=32):
    """An MSLS val city: database every 5 m on a line, queries scattered along and beyond it, some
    panoramas, and a sparse ``all`` column in subtask_index.csv (the official filter)."""
    rows = {}
    for role, n in (("database", n_db), ("query", n_q)):
        folder = root / "train_val" / city / role
        east = np.arange(n) * 5.0 if role == "database" else rng.uniform(-40, 260, n)
        pano = rng.random(n) < 0.15
        in_all = rng.random(n) < (0.6 if role == "database" else 0.25)
        keys = [f"{city}_{role}_{i:03d}" for i in range(n)]
        for k in keys:
            _img(folder / "images" / f"{k}.jpg")
        (folder / "raw.csv").write_text(
            ",key,lon,lat,ca,captured_at,pano\n" + "".join(f"{i},{k},0,0,0,0,{p}\n" for i, (k, p) in enumerate(zip(keys, pano)))
        )
        (folder / "postprocessed.csv").write_text(
            ",key,easting,northing,night,control_panel,view_direction,unique_cluster\n"
            + "".join(f"{i},{k},{e},500.0,False,False,Forward,0\n" for i, (k, e) in enumerate(zip(keys, east)))
        )
        (folder / "subtask_index.csv").write_text(
            ",all,s2w,w2s,o2n,n2o,d2n,n2d\n"
            + "".join(f"{i},{a},False,False,False,False,False,False\n" for i, a in enumerate(in_all))
        )
        rows[role] = (keys, east, pano, in_all)
    return rows


def test_msls_val_counts_the_queries_the_official_filter_keeps(tmp_path):
    import torch

    from structvpr.data.benchmarks import load_benchmark
    from structvpr.metrics.recall import RecallAtN

    rng = np.random.default_rng(0)
    cities = {c: _write_msls_val_city(tmp_path, c, rng) for c in ("cph", "sf")}
    # Independently, as mapillary_sls val mode does per city: rows with `all` true and no panorama,
    # in queries and database; a query counts when a kept database image of its city lies within 25 m.
    official = 0
    for rows in cities.values():
        _, q_east, q_pano, q_all = rows["query"]
        _, d_east, d_pano, d_all = rows["database"]
        db = d_east[d_all & ~d_pano]
        official += int(sum((np.abs(db - e) <= 25).any() for e in q_east[q_all & ~q_pano]))
    every = sum(int((~r["query"][2]).sum()) for r in cities.values())

    m = load_benchmark("msls_val", tmp_path)
    assert len(m.queries) < every and "subtask 'all'" in m.notes[0] and m.notes[1].startswith("sf: ")
    metric = RecallAtN((1, 5), radius=m.radius)
    n_db = len(m.database)
    utm = torch.tensor([r.utm for r in m.database + m.queries], dtype=torch.float64)
    desc = torch.nn.functional.normalize(torch.randn(len(utm), 8, generator=torch.Generator().manual_seed(0)), dim=1)
    metric.update(desc, torch.arange(len(utm)), torch.arange(len(utm)) >= n_db, utm)
    assert int(metric.compute()["num_queries"]) == official > 0
    # Every subtask column can be chosen; a missing file is named.
    assert len(load_benchmark("msls_val", tmp_path, subtask="s2w").queries) == 0
    (tmp_path / "train_val/sf/query/subtask_index.csv").unlink()
    with pytest.raises(DatasetLayoutError, match=r"sf/query/subtask_index.csv: missing; the official MSLS val"):
        load_benchmark("msls_val", tmp_path)
    assert len(load_benchmark("msls_val", tmp_path, subtask=None).queries) == every  # the unfiltered reading


def test_nordland_patchnetvlad_geometry_gives_plus_minus_7_frames(tmp_path):
    import torch

    from structvpr.data.benchmarks import load_benchmark
    from structvpr.metrics.recall import hit_matrix

    # The real nordland.npz layout: coordinates (frame, frame) for both sets, posDistThr 10.
    n = 60
    names = [f"{i:07d}.png" for i in range(n)]
    for folder in ("summer", "winter"):
        for name in names:
            _img(tmp_path / folder / name)
    lists = tmp_path / "dataset_imagenames"
    lists.mkdir()
    (lists / "nordland_imageNames_index.txt").write_text("".join(f"summer/{x}\n" for x in names))
    (lists / "nordland_imageNames_query.txt").write_text("".join(f"winter/{x}\n" for x in names))
    frames = np.stack([np.arange(n), np.arange(n)], 1).astype(float)
    (tmp_path / "dataset_gt_files").mkdir()
    np.savez(tmp_path / "dataset_gt_files/nordland.npz", utmDb=frames, utmQ=frames, posDistThr=10)
    m = load_benchmark("nordland", tmp_path)
    everything = np.tile(np.arange(n), (n, 1))  # every database frame "retrieved" by every query
    hit, _ = hit_matrix(
        torch.from_numpy(everything),
        query_utm=np.array([r.utm for r in m.queries]),
        database_utm=np.array([r.utm for r in m.database]),
        radius=m.radius,
    )
    counts = hit.sum(1).numpy()
    independent = (np.abs(np.arange(n)[:, None] - np.arange(n)[None]) <= 7).sum(1)  # +-7 frames
    assert counts.tolist() == independent.tolist()
    assert counts[n // 2] == 15  # an interior query: 15 positives, not the 21 of +-10 frames
