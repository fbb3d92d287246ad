-- An agency system's own database, as cpmail's `data pull` example reads it.
-- Its tables and columns are named its own way, not cpmail's; the queries in
-- cpmail.toml beside this file map them to cpmail's tables (docs/data.md,
-- "Feeding cpmail every day"). Plain SQL: PostgreSQL, SQLite and MariaDB run it.

CREATE TABLE employees (
    emp_code     VARCHAR(10) PRIMARY KEY,
    full_name    VARCHAR(100) NOT NULL,
    email        VARCHAR(200),
    reports_to   VARCHAR(10),
    daily_hours  NUMERIC(4, 2) NOT NULL,
    dept         VARCHAR(20),
    is_active    BOOLEAN NOT NULL
);

CREATE TABLE customers (
    cust_no      INTEGER PRIMARY KEY,
    cust_name    VARCHAR(100) NOT NULL,
    ap_email     VARCHAR(200)
);

CREATE TABLE account_team (
    cust_no      INTEGER NOT NULL,
    emp_code     VARCHAR(10) NOT NULL,
    team_role    VARCHAR(20) NOT NULL,
    PRIMARY KEY (cust_no, emp_code, team_role)
);

-- status_type: P for production, B for billing.
CREATE TABLE project_statuses (
    status_code  VARCHAR(10) NOT NULL,
    status_type  CHAR(1) NOT NULL,
    label        VARCHAR(50),
    alert_list   VARCHAR(200),
    PRIMARY KEY (status_code, status_type)
);

CREATE TABLE projects (
    proj_no      INTEGER PRIMARY KEY,
    cust_no      INTEGER NOT NULL,
    proj_name    VARCHAR(200) NOT NULL,
    created      TIMESTAMP,
    prod_status  VARCHAR(10),
    bill_status  VARCHAR(10)
);

CREATE TABLE project_tasks (
    task_no      INTEGER PRIMARY KEY,
    proj_no      INTEGER NOT NULL,
    task_title   VARCHAR(200) NOT NULL,
    owner        VARCHAR(10),
    due          DATE,
    finished     TIMESTAMP,
    budget       NUMERIC(12, 2),
    est_hours    NUMERIC(8, 2)
);

CREATE TABLE timesheet (
    line_no      INTEGER PRIMARY KEY,
    emp_code     VARCHAR(10) NOT NULL,
    proj_no      INTEGER,
    task_no      INTEGER,
    worked_on    DATE NOT NULL,
    hrs          NUMERIC(6, 2) NOT NULL,
    charge       NUMERIC(12, 2)
);
