-- A few rows for schema.sql, to try `cpmail data pull` on.

INSERT INTO employees VALUES ('AM', 'Ana Morales', 'ana.morales@studio.example', NULL, 8, 'ae', TRUE);
INSERT INTO employees VALUES ('RP', 'Rita Patel', 'rita.patel@studio.example', 'AM', 8, 'creative', TRUE);
INSERT INTO employees VALUES ('TN', 'Tom Nguyen', 'tom.nguyen@studio.example', 'AM', 6.5, 'production', TRUE);
INSERT INTO employees VALUES ('OL', 'Old Leaver', NULL, NULL, 0, NULL, FALSE);

INSERT INTO customers VALUES (101, 'Acme Foods', 'accounts.payable@acmefoods.example');
INSERT INTO customers VALUES (102, 'Blue Harbor Bank', NULL);

INSERT INTO account_team VALUES (101, 'AM', 'ae');
INSERT INTO account_team VALUES (101, 'RP', 'creative');
INSERT INTO account_team VALUES (102, 'AM', 'ae');
INSERT INTO account_team VALUES (102, 'TN', 'production');

INSERT INTO project_statuses VALUES ('NEW', 'P', 'New', 'AM');
INSERT INTO project_statuses VALUES ('WIP', 'P', 'In production', NULL);
INSERT INTO project_statuses VALUES ('PROOF', 'P', 'Proof to client', 'AM,RP');
INSERT INTO project_statuses VALUES ('UNB', 'B', 'Unbilled', NULL);
INSERT INTO project_statuses VALUES ('INV', 'B', 'Invoiced', 'AM');

INSERT INTO projects VALUES (5001, 101, 'Spring catalog', '2026-11-20 09:15:00', 'WIP', 'UNB');
INSERT INTO projects VALUES (5002, 102, 'Branch opening posters', '2026-11-26 14:00:00', 'NEW', 'UNB');

INSERT INTO project_tasks VALUES (9001, 5001, 'Layout', 'RP', '2026-11-25', NULL, 1500, 12);
INSERT INTO project_tasks VALUES (9002, 5001, 'Copy', 'AM', '2026-11-27', NULL, 800, 6);
INSERT INTO project_tasks VALUES (9003, 5002, 'Print quotes', 'TN', '2026-11-30', NULL, NULL, 2);

INSERT INTO timesheet VALUES (1, 'RP', 5001, 9001, '2026-11-24', 6, 540);
INSERT INTO timesheet VALUES (2, 'RP', 5001, 9001, '2026-11-25', 4.5, 405);
INSERT INTO timesheet VALUES (3, 'TN', 5002, 9003, '2026-11-26', 1, 65);
