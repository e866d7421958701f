{{ require_columns('customers', ['customer_id']) }}

with source as (
    select * from {{ source('raw', 'customers') }}
),

renamed as (
    select
        cast(customer_id as bigint) as customer_id,
        {{ column_or_null('customers', 'signup_date', 'date') }} as signup_date,
        {{ column_or_null('customers', 'gender', 'varchar') }} as gender,
        {{ column_or_null('customers', 'age_band', 'varchar') }} as age_band,
        {{ column_or_null('customers', 'income_band', 'varchar') }} as income_band,
        {{ column_or_null('customers', 'education', 'varchar') }} as education,
        {{ column_or_null('customers', 'occupation', 'varchar') }} as occupation,
        {{ column_or_null('customers', 'street', 'varchar') }} as street,
        {{ column_or_null('customers', 'city', 'varchar') }} as city,
        {{ column_or_null('customers', 'state', 'varchar') }} as state,
        {{ column_or_null('customers', 'zip', 'varchar') }} as zip
    from source
)

select * from renamed
