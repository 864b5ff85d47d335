"""Autoscaling of an endpoint's instances (Application Auto Scaling), and its removal.

Real-time endpoints: target tracking on the predefined SageMakerVariantInvocationsPerInstance (invocations
per instance per minute) between MIN >= 1 and MAX instances [rt].
Asynchronous endpoints: target tracking on ApproximateBacklogSizePerInstance (queued plus running requests
per instance, namespace AWS/SageMaker, dimension EndpointName, statistic Average) [async]; MIN may be 0. With
MIN 0 a second policy scales out from zero: at zero instances the backlog per instance is not defined, so
target tracking cannot start the first instance; a CloudWatch alarm on HasBacklogWithoutCapacity (1 while
requests wait and no instance runs) triggers a step scaling policy that adds one [async], [step].

  [rt]    https://docs.aws.amazon.com/sagemaker/latest/dg/endpoint-auto-scaling-policy.html
  [async] https://docs.aws.amazon.com/sagemaker/latest/dg/async-inference-autoscale.html (the metric
          specification, MinCapacity 0, and the HasBacklogWithoutCapacity alarm and step policy below)
  [step]  https://docs.aws.amazon.com/sagemaker/latest/dg/endpoint-auto-scaling-policy.html: "you must use
          step scaling if you want to enable an endpoint to scale out from zero active instances"
  [dereg] Application Auto Scaling PutScalingPolicy reference: "If a scalable target is deregistered ... Any
          scaling policies that were specified for the scalable target are deleted." Alarms that a step policy
          uses are the caller's own and are deleted separately.

Names are fixed per endpoint, so `launch delete` finds what `launch deploy` made from the endpoint name alone.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import LaunchError

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
VARIANT = "AllTraffic"  # the SageMaker SDK's variant name for a one-model endpoint
TARGET_POLICY = "wav2vec2-target-tracking"
FROM_ZERO_POLICY = "wav2vec2-scale-out-from-zero"
# Cool-downs, seconds. Real-time: add capacity within a minute, remove it after 5 quiet minutes. Async: a new
# instance takes minutes to start, and requests can run for an hour, so wait longer before acting again.
REALTIME_COOLDOWNS = {"ScaleInCooldown": 300, "ScaleOutCooldown": 60}
ASYNC_COOLDOWNS = {"ScaleInCooldown": 600, "ScaleOutCooldown": 300}
DEFAULT_ASYNC_BACKLOG_TARGET = 5.0  # the value of AWS's example [async]
# Scale out from zero [async]: HasBacklogWithoutCapacity is 1 or 0, so threshold 1 on its one-minute average for
# two minutes (a request waiting that long; starting an instance takes minutes more) adds one instance, and
# the target tracking policy takes over once it runs.
FROM_ZERO_STEP = {"AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Average", "Cooldown": 300,
                  "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]}
FROM_ZERO_ALARM = {"MetricName": "HasBacklogWithoutCapacity", "Namespace": "AWS/SageMaker", "Statistic": "Average",
                   "Period": 60, "EvaluationPeriods": 2, "DatapointsToAlarm": 2, "Threshold": 1,
                   "ComparisonOperator": "GreaterThanOrEqualToThreshold", "TreatMissingData": "missing"}


@dataclass(frozen=True)
class Autoscale:
    min_instances: int
    max_instances: int
    target: float  # invocations per instance per minute (real-time) or backlog per instance (async)


def parse(value: str, *, is_async: bool, target: float | None, instance_count: int) -> Autoscale:
    """--autoscale MIN:MAX with --scale-target, checked against the endpoint kind."""
    lo, sep, hi = value.partition(":")
    try:
        if not sep:
            raise ValueError
        low, high = int(lo), int(hi)
    except ValueError:
        raise LaunchError(f"--autoscale {value!r} must look like MIN:MAX, e.g. 1:4 (async endpoints: 0:4)") from None
    if low < 0 or high < 1 or low > high:
        raise LaunchError(f"--autoscale {value!r}: need 0 <= MIN <= MAX and MAX >= 1")
    if low == 0 and not is_async:
        raise LaunchError("--autoscale with MIN 0: only asynchronous endpoints (--async) scale to zero instances; "
                          "give a real-time endpoint MIN >= 1")
    if not max(low, 1) <= instance_count <= high:
        raise LaunchError(f"--instance-count {instance_count} is outside --autoscale {value}: the endpoint starts "
                          f"with --instance-count instances (at least 1), within MIN..MAX")
    if target is None:
        if not is_async:
            raise LaunchError("--autoscale on a real-time endpoint needs --scale-target N: the invocations per "
                              "instance per minute above which instances are added. Measure one instance's "
                              "throughput (bench/serving prints requests per second at each concurrency) and take "
                              "about half of it x 60")
        target = DEFAULT_ASYNC_BACKLOG_TARGET
    if not target > 0:
        raise LaunchError(f"--scale-target must be positive, got {target}")
    return Autoscale(low, high, float(target))


def resource_id(endpoint: str, variant: str = VARIANT) -> str:
    return f"endpoint/{endpoint}/variant/{variant}"


def alarm_name(endpoint: str) -> str:
    return f"{endpoint}-wav2vec2-has-backlog-without-capacity"


def apply(boto_session, region: str, endpoint: str, scale: Autoscale, *, is_async: bool) -> None:
    """Register the endpoint's variant and put its policies (the endpoint must be InService)."""
    aas = boto_session.client("application-autoscaling", region_name=region)
    target = {"ServiceNamespace": NAMESPACE, "ResourceId": resource_id(endpoint), "ScalableDimension": DIMENSION}
    aas.register_scalable_target(**target, MinCapacity=scale.min_instances, MaxCapacity=scale.max_instances)
    if is_async:
        tracking = {"TargetValue": scale.target,
                    "CustomizedMetricSpecification": {
                        "MetricName": "ApproximateBacklogSizePerInstance", "Namespace": "AWS/SageMaker",
                        "Dimensions": [{"Name": "EndpointName", "Value": endpoint}], "Statistic": "Average"},
                    **ASYNC_COOLDOWNS}
    else:
        tracking = {"TargetValue": scale.target,
                    "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
                    **REALTIME_COOLDOWNS}
    aas.put_scaling_policy(PolicyName=TARGET_POLICY, **target, PolicyType="TargetTrackingScaling",
                           TargetTrackingScalingPolicyConfiguration=tracking)
    print(f"[launch] autoscaling {endpoint}: {scale.min_instances}..{scale.max_instances} instances, target "
          f"{scale.target:g} {'requests in the backlog' if is_async else 'invocations per minute'} per instance",
          flush=True)
    if is_async and scale.min_instances == 0:
        arn = aas.put_scaling_policy(PolicyName=FROM_ZERO_POLICY, **target, PolicyType="StepScaling",
                                     StepScalingPolicyConfiguration=FROM_ZERO_STEP)["PolicyARN"]
        cloudwatch = boto_session.client("cloudwatch", region_name=region)
        cloudwatch.put_metric_alarm(AlarmName=alarm_name(endpoint), **FROM_ZERO_ALARM,
                                    Dimensions=[{"Name": "EndpointName", "Value": endpoint}], AlarmActions=[arn])
        print(f"[launch] {endpoint} scales in to 0 instances when idle and out from 0 when a request waits "
              "(alarm on HasBacklogWithoutCapacity)", flush=True)


def remove(boto_session, region: str, endpoint: str, variants: list[str]) -> None:
    """Delete the policies, the scale-out-from-zero alarm and the registered targets of the endpoint's variants.
    Each step tolerates what is already gone, so a second `delete` does nothing and says so."""
    import botocore.exceptions

    aas = boto_session.client("application-autoscaling", region_name=region)
    cloudwatch = boto_session.client("cloudwatch", region_name=region)
    try:
        _remove(aas, cloudwatch, endpoint, variants)
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if "AccessDenied" not in code and code != "UnauthorizedOperation":
            raise
        # An identity allowed to delete endpoints but not to read autoscaling (README's policy before async and
        # autoscaling existed): the endpoint still goes; say what could not be checked.
        print(f"[launch] autoscaling of {endpoint} not checked ({code}: {exc.response['Error'].get('Message', '')}); "
              "docs/sagemaker.md (IAM permissions) lists the application-autoscaling and cloudwatch actions delete uses")


def _remove(aas, cloudwatch, endpoint: str, variants: list[str]) -> None:
    import botocore.exceptions

    for variant in variants:
        rid = resource_id(endpoint, variant)
        policies = aas.describe_scaling_policies(ServiceNamespace=NAMESPACE, ResourceId=rid,
                                                 ScalableDimension=DIMENSION).get("ScalingPolicies", [])
        for policy in policies:
            # Deregistering would delete them too [dereg]; deleting each first names what went.
            aas.delete_scaling_policy(PolicyName=policy["PolicyName"], ServiceNamespace=NAMESPACE, ResourceId=rid,
                                      ScalableDimension=DIMENSION)
            print(f"[launch] deleted scaling policy {policy['PolicyName']} of {rid}")
        targets = aas.describe_scalable_targets(ServiceNamespace=NAMESPACE, ResourceIds=[rid],
                                                ScalableDimension=DIMENSION).get("ScalableTargets", [])
        if targets:
            try:
                aas.deregister_scalable_target(ServiceNamespace=NAMESPACE, ResourceId=rid, ScalableDimension=DIMENSION)
                print(f"[launch] deregistered scalable target {rid}")
            except botocore.exceptions.ClientError as exc:  # ObjectNotFoundException: gone meanwhile
                if exc.response.get("Error", {}).get("Code") != "ObjectNotFoundException":
                    raise
    name = alarm_name(endpoint)
    if cloudwatch.describe_alarms(AlarmNames=[name]).get("MetricAlarms"):
        cloudwatch.delete_alarms(AlarmNames=[name])
        print(f"[launch] deleted alarm {name}")
