{{ require_columns('customers', ['customer_id']) }}

with source as (
    select * from {{ source('raw', 'customers') }}
),

renamed as (
    select
        cast(customer_id as bigint) as customer_id,
        {{ column_or_null('customers', 'signup_date', 'date') }} as signup_date,
        {{ column_or_null('customers', 'gender', 'string') }} as gender,
        {{ column_or_null('customers', 'age_band', 'string') }} as age_band,
        {{ column_or_null('customers', 'income_band', 'string') }} as income_band,
        {{ column_or_null('customers', 'education', 'string') }} as education,
        {{ column_or_null('customers', 'occupation', 'string') }} as occupation,
        {{ column_or_null('customers', 'street', 'string') }} as street,
        {{ column_or_null('customers', 'city', 'string') }} as city,
        {{ column_or_null('customers', 'state', 'string') }} as state,
        {{ column_or_null('customers', 'zip', 'string') }} as zip
    from source
)

select * from renamed
