{# customer_embeddings (the ONNX Runtime scoring Python model) runs only once a model exists.

   score_customers (var, true/false) wins; else LOOKALIKE_MODEL_READY, which `lookalike` sets to
   true when its models folder holds a customer model. Plain `dbt build` without either skips it. #}
{% macro scoring_enabled() %}
    {%- set setting = var('score_customers', env_var('LOOKALIKE_MODEL_READY', 'false')) -%}
    {{- return((setting | string | lower) in ('true', '1', 'yes')) -}}
{% endmacro %}

{# on-run-end: say why customer_embeddings did not run and what to do. Only when lookalike is the
   root project (the CLI's, or a `lookalike init` copy): as a package of someone else's project
   the hook stays quiet, scoring being opt-in there (README "Use it as a dbt package"). #}
{% macro scoring_notice() %}
    {%- if execute and project_name == 'lookalike' and target.type == 'duckdb' and not scoring_enabled() -%}
        {{- log("customer_embeddings skipped: no trained model yet. Run `lookalike train`, then `lookalike score` "
                ~ "(plain dbt: dbt build --vars '{score_customers: true}' once a model exists).", info=True) -}}
    {%- endif -%}
    {{- return('') -}}
{% endmacro %}
