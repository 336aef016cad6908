"""The TFX pipeline: ExampleGen -> Statistics/Schema/Validator -> Transform -> Trainer -> Evaluator -> Pusher."""
from __future__ import annotations

from tfx import v1 as tfx
from tfx.types import channel_utils

from components.anomalies_gate import AnomaliesGate
from components.fusion_example_gen import FusionExampleGen
from components.model_fusion import ModelFusion, check_member_tokenizers, member_trainer_id, tag_member_output
from components.transfer_report import TransferReport, baseline_name
from models.evaluation import eval_config
from models.preprocessing import SPEC_KEY
from models.spec import ProjectSpec
from pipeline import configs
from pipeline.data_prep import SPLITS


def _trainer(spec: ProjectSpec, examples, transform_graph, schema) -> tfx.components.Trainer:
    return tfx.components.Trainer(
        run_fn=configs.RUN_FN,
        examples=examples,
        transform_graph=transform_graph,
        schema=schema,
        train_args=tfx.proto.TrainArgs(),
        eval_args=tfx.proto.EvalArgs(),
        custom_config={SPEC_KEY: spec.to_json()},
    )


def _train(spec: ProjectSpec, examples, transform_graph, schema) -> tuple[list, tfx.dsl.Channel]:
    """The components that produce the model the Evaluator and Pusher take, and its channel: one
    Trainer, or for an ensemble one `Trainer.<member>` per member (each with its member spec) and the
    ModelFusion that fuses their unioned models."""
    if spec.ensemble is None:
        trainer = _trainer(spec, examples, transform_graph, schema)
        return [trainer], trainer.outputs["model"]
    check_member_tokenizers(spec)
    trainers = [_member_trainer(spec.member_spec(m.name), m.name, examples, transform_graph, schema)
                for m in spec.ensemble.members]
    fusion = ModelFusion(models=channel_utils.union([t.outputs["model"] for t in trainers]), examples=examples,
                         spec_json=spec.to_json())
    return [*trainers, fusion], fusion.outputs["model"]


def _member_trainer(spec: ProjectSpec, name: str, examples, transform_graph, schema) -> tfx.components.Trainer:
    """A Trainer named `Trainer.<name>` whose Model and ModelRun carry `name` (see model_fusion)."""
    trainer = _trainer(spec, examples, transform_graph, schema).with_id(member_trainer_id(name))
    tag_member_output(trainer.outputs["model"], name)
    tag_member_output(trainer.outputs["model_run"], name)
    return trainer


def _transfer_report(spec: ProjectSpec, examples, transform_graph, schema, model, model_runs: list,
                     oracle_csv: str | None) -> list:
    """One single-task Trainer per task (same encoder, features, budget) and the TransferReport that
    compares each with the multi-task candidate."""
    baselines = [_member_trainer(spec.single_task_spec(t.name), baseline_name(t.name), examples, transform_graph,
                                 schema) for t in spec.tasks]
    report = TransferReport(
        examples=examples, model=model,
        baseline_models=channel_utils.union([b.outputs["model"] for b in baselines]),
        model_runs=channel_utils.union([*model_runs, *(b.outputs["model_run"] for b in baselines)]),
        spec_json=spec.to_json(), oracle_csv=oracle_csv or "")
    return [*baselines, report]


def _baseline_model():
    """The latest blessed model of this pipeline, which the Evaluator compares the candidate with."""
    return tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    data_root: str,
    spec: ProjectSpec,
    serving_model_dir: str,
    metadata_path: str,
    beam_pipeline_args: list[str] | None = None,
    baselines: bool = False,
    oracle_csv: str | None = None,
) -> tfx.dsl.Pipeline:
    """The pipeline of one config; `baselines` adds a single-task model per task and the TransferReport
    (`oracle_csv`: Bayes-optimal probabilities of generated data, keyed by event_id)."""
    custom_config = {SPEC_KEY: spec.to_json()}
    split = spec.training.eval_split_percent
    split_config = tfx.proto.SplitConfig(splits=[
        tfx.proto.SplitConfig.Split(name="train", hash_buckets=100 - split),
        tfx.proto.SplitConfig.Split(name="eval", hash_buckets=split),
    ])
    if spec.training.eval_split_by:
        split_config.partition_feature_name = spec.training.eval_split_by
    output_config = tfx.proto.Output(split_config=split_config)
    if len(spec.sources) > 1:
        # Sources with different columns and label sets: typed from the spec, sampled per source.
        example_gen = FusionExampleGen(input_base=data_root, spec_json=spec.to_json())
    elif spec.training.split_seed is not None:
        # data_prep split the rows already (seeded_split): one folder per split.
        example_gen = tfx.components.CsvExampleGen(input_base=data_root, input_config=tfx.proto.Input(splits=[
            tfx.proto.Input.Split(name=split, pattern=f"{split}/*") for split in SPLITS]))
    else:
        example_gen = tfx.components.CsvExampleGen(input_base=data_root, output_config=output_config)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"], infer_feature_shape=False)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    )
    gate = AnomaliesGate(anomalies=example_validator.outputs["anomalies"], schema=schema_gen.outputs["schema"])
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=gate.outputs["validated_schema"],
        preprocessing_fn=configs.PREPROCESSING_FN,
        custom_config=custom_config,
        # The Trainer applies the Transform graph to raw examples itself (see models/model.py).
        materialize=False,
        # Statistics of the transformed features would take a second full pass over the data (token
        # ids, masks) for no consumer in this pipeline; StatisticsGen covers the raw data.
        disable_statistics=True,
    )
    training, model = _train(spec, example_gen.outputs["examples"], transform.outputs["transform_graph"],
                             gate.outputs["validated_schema"])
    # Only compare with the latest blessed model when some task limits what it may lose against it.
    resolver = _baseline_model() if any(spec.max_loss(t) is not None for t in spec.tasks) else None
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=model,
        baseline_model=resolver.outputs["model"] if resolver else None,
        eval_config=eval_config(spec),
    )
    transfer = []
    if baselines:
        model_runs = [t.outputs["model_run"] for t in training if "model_run" in t.outputs]
        transfer = _transfer_report(spec, example_gen.outputs["examples"], transform.outputs["transform_graph"],
                                    gate.outputs["validated_schema"], model, model_runs, oracle_csv)
    pusher = tfx.components.Pusher(
        model=model,
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_model_dir)
        ),
    )
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=[example_gen, statistics_gen, schema_gen, example_validator, gate, transform, *training,
                    *([resolver] if resolver else []), evaluator, pusher, *transfer],
        enable_cache=False,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path),
        beam_pipeline_args=beam_pipeline_args or configs.default_beam_args(),
    )
