{# customer_embeddings (the ONNX Runtime scoring Python model) runs only once a model exists.

   score_customers (var, true/false) wins; else LOOKALIKE_MODEL_READY, which `lookalike` sets to
   true when its models folder holds a customer model. Plain `dbt build` without either skips it. #}
{% macro scoring_enabled() %}
    {%- set setting = var('score_customers', env_var('LOOKALIKE_MODEL_READY', 'false')) -%}
    {{- return((setting | string | lower) in ('true', '1', 'yes')) -}}
{% endmacro %}

{# on-run-end: say why customer_embeddings did not run and what to do. #}
{% macro scoring_notice() %}
    {%- if execute and target.type == 'duckdb' and not scoring_enabled() -%}
        {{- log("customer_embeddings skipped: no trained model yet. Run `lookalike train`, then `lookalike score` "
                ~ "(plain dbt: dbt build --vars '{score_customers: true}' once a model exists).", info=True) -}}
    {%- endif -%}
    {{- return('') -}}
{% endmacro %}
