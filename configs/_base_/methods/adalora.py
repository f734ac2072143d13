# AdaLoRA through huggingface peft (Zhang et al., ICLR 2023): SVD-form updates starting at rank 48, pruned by
# importance to an average rank of 32 (LoRA's) between iterations 16k and 128k of the 160k schedule, every 100
# iterations (AdaLoRAHook rescales these to train_cfg.max_iters); the hook runs peft's update_and_allocate after each
# optimizer step. Merges into the weights.
_base_ = ['./peft-targets.py']
peft_method = dict(type='peft', config=dict(type='AdaLoraConfig', init_r=48, target_r=32, lora_alpha=32,
                                            total_step=160000, tinit=16000, tfinal=32000, deltaT=100,
                                            target_modules={{_base_.peft_targets}}))
peft_method_hooks = [dict(type='AdaLoRAHook')]
