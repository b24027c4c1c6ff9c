"""/v1/fine_tuning/jobs through the official SDK, without a worker: creation and validation of
parameters, listing with pagination, events, cancel of a job no worker holds, isolation."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from tests.unit.conftest import TRAIN, Admin, make_client


@pytest.fixture
def env(tmp_path):
    with make_client(data_dir=tmp_path) as c:
        a = Admin(c)
        t1, t2 = a.tenant("one"), a.tenant("two")
        sdk = {n: OpenAI(base_url="http://testserver/v1", api_key=a.key(t)[1], http_client=c, max_retries=0)
               for n, t in (("one", t1), ("two", t2))}
        f = sdk["one"].files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
        yield c, sdk, f.id, t1


def test_create_retrieve_list_events_cancel(env):
    _, sdk, fid, tenant = env
    one = sdk["one"]
    job = one.fine_tuning.jobs.create(
        model="fake-model", training_file=fid, suffix="demo", seed=7, metadata={"team": "a"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}})
    assert job.id.startswith("ftjob-") and job.status == "validating_files" and job.seed == 7
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.learning_rate_multiplier == "auto"
    assert job.organization_id == tenant and job.user_provided_suffix == "demo" and job.fine_tuned_model is None
    assert one.fine_tuning.jobs.retrieve(job.id).training_file == fid
    more = [one.fine_tuning.jobs.create(model="fake-model", training_file=fid) for _ in range(3)]
    page = one.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in page.data] == [more[2].id, more[1].id] and page.has_more
    rest = one.fine_tuning.jobs.list(limit=10, after=more[1].id)
    assert [j.id for j in rest.data] == [more[0].id, job.id]
    assert [j.id for j in one.fine_tuning.jobs.list(metadata={"team": "a"}).data] == [job.id]
    events = one.fine_tuning.jobs.list_events(job.id).data
    assert events and "Validating training file" in events[-1].message
    cancelled = one.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"  # no worker held it: cancelled at once
    with pytest.raises(openai.BadRequestError):
        one.fine_tuning.jobs.cancel(job.id)
    assert one.fine_tuning.jobs.checkpoints.list(job.id).data == []


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"model": "gpt-4o"}, "model"),
    ({"training_file": "file-doesnotexist"}, "training_file"),
    ({"suffix": "bad suffix!"}, "suffix"),
    ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"learning_rate_multiplier": -1}}, "hyperparameters.learning_rate_multiplier"),
])
def test_bad_parameters_are_400_naming_the_field(env, kwargs, param):
    _, sdk, fid, _ = env
    args = {"model": "fake-model", "training_file": fid, **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        sdk["one"].fine_tuning.jobs.create(**args)
    assert e.value.param == param


def test_a_file_with_another_purpose_is_refused(env):
    _, sdk, _, _ = env
    f = sdk["one"].files.create(file=("b.jsonl", TRAIN), purpose="batch")
    with pytest.raises(openai.BadRequestError) as e:
        sdk["one"].fine_tuning.jobs.create(model="fake-model", training_file=f.id)
    assert e.value.param == "training_file" and "purpose" in e.value.message


def test_jobs_and_files_of_other_tenants_are_invisible(env):
    _, sdk, fid, _ = env
    job = sdk["one"].fine_tuning.jobs.create(model="fake-model", training_file=fid)
    two = sdk["two"]
    assert two.fine_tuning.jobs.list().data == []
    jobs = two.fine_tuning.jobs
    for call in (lambda: jobs.retrieve(job.id), lambda: jobs.cancel(job.id), lambda: jobs.list_events(job.id),
                 lambda: jobs.checkpoints.list(job.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.BadRequestError) as e:  # another tenant's file id is not a file of yours
        two.fine_tuning.jobs.create(model="fake-model", training_file=fid)
    assert e.value.param == "training_file"
    assert sdk["one"].fine_tuning.jobs.retrieve(job.id).status == "validating_files"
