{% materialization table, adapter='spark', supported_languages=['sql', 'python'] %}
{#- dbt-spark's own table materialization drops the table, then creates it: a kill, or a failing model,
    between the two leaves no table at all (Parquet tables have no `create or replace`). This one, in the
    root project so it takes precedence, writes the new table under `<name>__incoming` and swaps it in with
    two renames, as `lookalike spark load-raw` does (spark/session.py replace_table): the old table keeps
    its name until the new one is complete; a kill between the two renames leaves it as `<name>__previous`,
    which the next build of the model puts back before it starts. An `__incoming` folder a killed write left
    without a metastore entry is removed by the CLI before it runs dbt on Spark (`lookalike build --target spark`,
    `lookalike dbt ... --target spark`: dbt_runner.run_dbt_in_process): Spark refuses to create a table over it. -#}
  {%- set language = model['language'] -%}
  {%- set identifier = model['alias'] -%}
  {%- set grant_config = config.get('grants') -%}
  {%- set target_relation = api.Relation.create(identifier=identifier, schema=schema, database=database, type='table') -%}
  {%- set staging_relation = api.Relation.create(identifier=identifier ~ '__incoming', schema=schema, database=database, type='table') -%}
  {%- set previous_relation = api.Relation.create(identifier=identifier ~ '__previous', schema=schema, database=database, type='table') -%}

  {%- set old_relation = adapter.get_relation(database=database, schema=schema, identifier=identifier) -%}
  {%- set left_previous = adapter.get_relation(database=database, schema=schema, identifier=previous_relation.identifier) -%}
  {%- if left_previous is not none -%}
    {%- if old_relation is none -%}
      {#- Killed between the renames: the last complete table is the previous one. -#}
      {%- do adapter.rename_relation(left_previous, target_relation) -%}
      {%- set old_relation = adapter.get_relation(database=database, schema=schema, identifier=identifier) -%}
    {%- else -%}
      {%- do adapter.drop_relation(left_previous) -%}
    {%- endif -%}
  {%- endif -%}
  {%- set left_staging = adapter.get_relation(database=database, schema=schema, identifier=staging_relation.identifier) -%}
  {%- if left_staging is not none -%}
    {%- do adapter.drop_relation(left_staging) -%}
  {%- endif -%}

  {{ run_hooks(pre_hooks) }}

  {%- call statement('main', language=language) -%}
    {{ create_table_as(False, staging_relation, compiled_code, language) }}
  {%- endcall -%}

  {%- if old_relation is not none and old_relation.type == 'view' -%}
    {#- A model that was a view: a view holds no data, dropping it loses nothing a rerun cannot make. -#}
    {%- do adapter.drop_relation(old_relation) -%}
  {%- elif old_relation is not none -%}
    {%- do adapter.rename_relation(old_relation, previous_relation) -%}
  {%- endif -%}
  {%- do adapter.rename_relation(staging_relation, target_relation) -%}
  {%- if old_relation is not none and old_relation.type != 'view' -%}
    {%- do adapter.drop_relation(previous_relation) -%}
  {%- endif -%}

  {% set should_revoke = should_revoke(old_relation, full_refresh_mode=True) %}
  {% do apply_grants(target_relation, grant_config, should_revoke) %}
  {% do persist_docs(target_relation, model) %}
  {% do persist_constraints(target_relation, model) %}

  {{ run_hooks(post_hooks) }}

  {{ return({'relations': [target_relation]}) }}
{% endmaterialization %}
