CREATE TABLE IF NOT EXISTS test_backend_ops (
  test_time TEXT,
  build_commit TEXT,
  backend_name TEXT,
  op_name TEXT,
  op_params TEXT,
  test_mode TEXT,
  supported INTEGER,
  passed INTEGER,
  error_message TEXT,
  time_us REAL,
  flops REAL,
  bandwidth_gb_s REAL,
  memory_kb INTEGER,
  n_runs INTEGER,
  device_description TEXT,
  backend_reg_name TEXT
);

INSERT INTO test_backend_ops (test_time, build_commit, backend_name, op_name, op_params, test_mode, supported, passed, error_message, time_us, flops, bandwidth_gb_s, memory_kb, n_runs, device_description, backend_reg_name) VALUES ('2026-12-01T21:31:14Z', '5cb2955', 'CPU', 'GET_ROWS', 'type=turbo3,n=128,m=16,r=5,be1=1,be2=1,v=0,vs0=0,offset_cols=0', 'test', '1', '1', '', '0.000000', '0.000000', '0.000000', '0', '0', '', '');
INSERT INTO test_backend_ops (test_time, build_commit, backend_name, op_name, op_params, test_mode, supported, passed, error_message, time_us, flops, bandwidth_gb_s, memory_kb, n_runs, device_description, backend_reg_name) VALUES ('2026-12-01T21:31:14Z', '5cb2955', 'CPU', 'GET_ROWS', 'type=turbo3,n=128,m=16,r=5,be1=2,be2=1,v=1,vs0=0,offset_cols=0', 'test', '1', '1', '', '0.000000', '0.000000', '0.000000', '0', '0', '', '');
INSERT INTO test_backend_ops (test_time, build_commit, backend_name, op_name, op_params, test_mode, supported, passed, error_message, time_us, flops, bandwidth_gb_s, memory_kb, n_runs, device_description, backend_reg_name) VALUES ('2026-12-01T21:31:14Z', '5cb2955', 'CPU', 'GET_ROWS', 'type=turbo3,n=256,m=16,r=5,be1=1,be2=1,v=0,vs0=0,offset_cols=0', 'test', '1', '1', '', '0.000000', '0.000000', '0.000000', '0', '0', '', '');
INSERT INTO test_backend_ops (test_time, build_commit, backend_name, op_name, op_params, test_mode, supported, passed, error_message, time_us, flops, bandwidth_gb_s, memory_kb, n_runs, device_description, backend_reg_name) VALUES ('2026-12-01T21:31:14Z', '5cb2955', 'CPU', 'GET_ROWS', 'type=turbo3,n=256,m=16,r=5,be1=2,be2=1,v=1,vs0=0,offset_cols=0', 'test', '1', '1', '', '0.000000', '0.000000', '0.000000', '0', '0', '', '');
INSERT INTO test_backend_ops (test_time, build_commit, backend_name, op_name, op_params, test_mode, supported, passed, error_message, time_us, flops, bandwidth_gb_s, memory_kb, n_runs, device_description, backend_reg_name) VALUES ('2026-12-01T21:31:14Z', '5cb2955', 'CPU', 'GET_ROWS', 'type=turbo3,n=512,m=16,r=5,be1=1,be2=1,v=0,vs0=0,offset_cols=0', 'test', '1', '1', '', '0.000000', '0.000000', '0.000000', '0', '0', '', '');
INSERT INTO test_backend_ops (test_time, build_commit, backend_name, op_name, op_params, test_mode, supported, passed, error_message, time_us, flops, bandwidth_gb_s, memory_kb, n_runs, device_description, backend_reg_name) VALUES ('2026-12-01T21:31:14Z', '5cb2955', 'CPU', 'GET_ROWS', 'type=turbo3,n=512,m=16,r=5,be1=2,be2=1,v=1,vs0=0,offset_cols=0', 'test', '1', '1', '', '0.000000', '0.000000', '0.000000', '0', '0', '', '');
INSERT INTO test_backend_ops (test_time, build_commit, backend_name, op_name, op_params, test_mode, supported, passed, error_message, time_us, flops, bandwidth_gb_s, memory_kb, n_runs, device_description, backend_reg_name) VALUES ('2026-12-01T21:31:14Z', '5cb2955', 'CPU', 'GET_ROWS', 'type=turbo3,n=512,m=16,r=5,be1=1,be2=1,v=0,vs0=0,offset_cols=0', 'test', '1', '1', '', '0.000000', '0.000000', '0.000000', '0', '0', '', '');
INSERT INTO test_backend_ops (test_time, build_commit, backend_name, op_name, op_params, test_mode, supported, passed, error_message, time_us, flops, bandwidth_gb_s, memory_kb, n_runs, device_description, backend_reg_name) VALUES ('2026-12-01T21:31:14Z', '5cb2955', 'CPU', 'GET_ROWS', 'type=turbo3,n=512,m=16,r=5,be1=2,be2=1,v=1,vs0=0,offset_cols=0', 'test', '1', '1', '', '0.000000', '0.000000', '0.000000', '0', '0', '', '');
