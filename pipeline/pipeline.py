"""The TFX pipeline: ExampleGen -> Statistics/Schema/Validator -> Transform -> Trainer -> Evaluator -> Pusher."""
from __future__ import annotations

from tfx import v1 as tfx
from tfx.types import channel_utils

from components.anomalies_gate import AnomaliesGate
from components.fusion_example_gen import FusionExampleGen
from components.model_fusion import ModelFusion, check_member_tokenizers, member_trainer_id, tag_member_output
from models.evaluation import eval_config
from models.preprocessing import SPEC_KEY
from models.spec import ProjectSpec
from pipeline import configs


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
    trainers = []
    for member in spec.ensemble.members:
        trainer = _trainer(spec.member_spec(member.name), examples, transform_graph, schema)
        trainer = trainer.with_id(member_trainer_id(member.name))
        tag_member_output(trainer.outputs["model"], member.name)
        trainers.append(trainer)
    fusion = ModelFusion(models=channel_utils.union([t.outputs["model"] for t in trainers]), examples=examples,
                         spec_json=spec.to_json())
    return [*trainers, fusion], fusion.outputs["model"]


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    data_root: str,
    spec: ProjectSpec,
    serving_model_dir: str,
    metadata_path: str,
    beam_pipeline_args: list[str] | None = None,
) -> tfx.dsl.Pipeline:
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
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=model,
        eval_config=eval_config(spec),
    )
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
                    evaluator, pusher],
        enable_cache=False,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path),
        beam_pipeline_args=beam_pipeline_args or configs.default_beam_args(),
    )
